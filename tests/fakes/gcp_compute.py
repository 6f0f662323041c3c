"""A local Compute Engine API (REST v1, the JSON the google-cloud-compute REST transport speaks).

Enough of it for snapshot providers: disks.createSnapshot, snapshots get/list/delete/insert,
disks insert/get/delete/aggregatedList, instances get/attachDisk/detachDisk, zone and global operations
get/wait. State lives in memory:

- operations stay RUNNING for ``op_running_polls`` get/wait calls, then DONE (with an error when
  a failure was injected);
- snapshots are CREATING for ``creating_polls`` gets, UPLOADING for ``uploading_polls``, then
  READY (or FAILED);
- a repeated ``requestId`` returns the first request's operation without acting again;
- deleting a disk that instances use (``users``) is refused with 400 ``resourceInUseByAnotherResource``;
- attachDisk takes effect at once (the disk's ``users``, the instance's ``disks``) and refuses, as
  GCP does, a disk of another zone, a disk another instance uses, and a device name in use;
- faults from ``JsonHttpFake`` (429 + Retry-After, 403, a 503 after the request took effect).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tests.fakes.json_http import Fault, JsonHttpFake, Reply

PREFIX = r"^/compute/v1/projects/(?P<project>[^/]+)"
ROUTES = [
    ("create_snapshot", "POST", PREFIX + r"/zones/(?P<zone>[^/]+)/disks/(?P<disk>[^/]+)/createSnapshot$"),
    ("insert_disk", "POST", PREFIX + r"/zones/(?P<zone>[^/]+)/disks$"),
    ("aggregated_disks", "GET", PREFIX + r"/aggregated/disks$"),
    ("get_disk", "GET", PREFIX + r"/zones/(?P<zone>[^/]+)/disks/(?P<disk>[^/]+)$"),
    ("delete_disk", "DELETE", PREFIX + r"/zones/(?P<zone>[^/]+)/disks/(?P<disk>[^/]+)$"),
    ("get_instance", "GET", PREFIX + r"/zones/(?P<zone>[^/]+)/instances/(?P<instance>[^/]+)$"),
    ("attach_disk", "POST", PREFIX + r"/zones/(?P<zone>[^/]+)/instances/(?P<instance>[^/]+)/attachDisk$"),
    ("detach_disk", "POST", PREFIX + r"/zones/(?P<zone>[^/]+)/instances/(?P<instance>[^/]+)/detachDisk$"),
    ("zone_op", "GET|POST", PREFIX + r"/zones/(?P<zone>[^/]+)/operations/(?P<op>[^/]+?)(?P<wait>/wait)?$"),
    ("global_op", "GET|POST", PREFIX + r"/global/operations/(?P<op>[^/]+?)(?P<wait>/wait)?$"),
    ("list_snapshots", "GET", PREFIX + r"/global/snapshots$"),
    ("insert_snapshot", "POST", PREFIX + r"/global/snapshots$"),
    ("get_snapshot", "GET", PREFIX + r"/global/snapshots/(?P<snapshot>[^/]+)$"),
    ("delete_snapshot", "DELETE", PREFIX + r"/global/snapshots/(?P<snapshot>[^/]+)$"),
]
_LABEL_TERM = re.compile(r'\(?\s*labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"\s*\)?')
BASE = "https://www.googleapis.com/compute/v1"
REASONS = {400: "invalid", 403: "forbidden", 404: "notFound", 409: "alreadyExists",
           429: "rateLimitExceeded", 503: "backendError"}


@dataclass
class SnapshotFailure:
    message: str
    code: str = "INTERNAL_ERROR"
    at_create: bool = False  # the operation fails at once and no snapshot is made


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class FakeGcpCompute(JsonHttpFake):
    def __init__(self, project: str = "snapctl-test", *, op_running_polls: int = 2, creating_polls: int = 1,
                 uploading_polls: int = 1, page_size: int = 500) -> None:
        super().__init__()
        self.project = project
        self.op_running_polls = op_running_polls
        self.creating_polls = creating_polls
        self.uploading_polls = uploading_polls
        self.page_size = page_size
        self.disks: dict[tuple[str, str], dict[str, Any]] = {}
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self._request_ids: dict[str, str] = {}
        self._failures: list[SnapshotFailure] = []
        self._ids = itertools.count(1000)

    # --- setup and injection -----------------------------------------------------------------
    def add_disk(self, zone: str, name: str, size_gb: int = 10, *, labels: dict[str, str] | None = None,
                 users: list[str] | None = None) -> dict[str, Any]:
        """``users``: instance names the disk is attached to."""
        with self.lock:
            disk = {"kind": "compute#disk", "id": str(next(self._ids)), "name": name,
                    "zone": f"{BASE}/projects/{self.project}/zones/{zone}", "sizeGb": str(size_gb), "status": "READY",
                    "selfLink": self._disk_link(zone, name), "creationTimestamp": _now()}
            if labels:
                disk.update(labels=dict(labels), labelFingerprint="42WmSpB8rSM=")
            if users:
                disk["users"] = [f"{BASE}/projects/{self.project}/zones/{zone}/instances/{u}" for u in users]
            self.disks[(zone, name)] = disk
            return disk

    def add_instance(self, zone: str, name: str) -> dict[str, Any]:
        """A running instance with its boot disk (``<name>-boot``, attached as device ``persistent-disk-0``)."""
        with self.lock:
            boot = self.add_disk(zone, f"{name}-boot")
            instance = {"kind": "compute#instance", "id": str(next(self._ids)), "name": name, "status": "RUNNING",
                        "zone": f"{BASE}/projects/{self.project}/zones/{zone}",
                        "selfLink": f"{BASE}/projects/{self.project}/zones/{zone}/instances/{name}",
                        "disks": [{"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
                                   "source": boot["selfLink"], "deviceName": "persistent-disk-0", "index": 0,
                                   "boot": True, "autoDelete": True}]}
            boot["users"] = [instance["selfLink"]]
            self.instances[(zone, name)] = instance
            return instance

    def attached(self, zone: str, instance: str) -> dict[str, str]:
        """The instance's disks other than its boot disk: device name -> disk name."""
        with self.lock:
            return {d["deviceName"]: d["source"].rsplit("/", 1)[-1]
                    for d in self.instances[(zone, instance)]["disks"] if not d.get("boot")}

    def add_snapshot(self, name: str, *, labels: dict[str, str] | None = None, status: str = "READY",
                     description: str = "") -> dict[str, Any]:
        with self.lock:
            snap = self._new_snapshot(name, {"labels": labels or {}, "description": description}, source=None)
            snap["status"] = status
            snap["_polls"] = 10**6
            return snap

    def fail_next_snapshot(self, message: str, *, code: str = "INTERNAL_ERROR", at_create: bool = False) -> None:
        """The next createSnapshot ends FAILED (after CREATING/UPLOADING) with ``message``, or,
        ``at_create``, its operation is DONE with the error at once and nothing is created."""
        with self.lock:
            self._failures.append(SnapshotFailure(message, code, at_create))

    def deny(self, permission: str, *, method: str | None = None, path_contains: str | None = None,
             times: int = 1) -> Fault:
        return self.inject(Fault(403, times, None, method, path_contains,
                                 message=f"Required '{permission}' permission for 'projects/{self.project}'"))

    def fail_after_commit(self, *, path_contains: str = "createSnapshot", status: int = 503, times: int = 1) -> Fault:
        return self.inject(Fault(status, times, None, None, path_contains, after_commit=True,
                                 message="the service is currently unavailable"))

    # --- wire format -------------------------------------------------------------------------
    def error_body(self, status: int, message: str, fault: Fault | None = None) -> Any:
        reason = (fault.extra.get("reason") if fault else None) or REASONS.get(status, "backendError")
        domain = "usageLimits" if "rate" in reason.lower() else "global"
        return {"error": {"code": status, "message": message,
                          "errors": [{"message": message, "domain": domain, "reason": reason}]}}

    def route(self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str]) -> Reply:
        for name, methods, pattern in ROUTES:
            match = re.match(pattern, path)
            if match and method in methods.split("|"):
                args = match.groupdict()
                if args.pop("project") != self.project:
                    return self._error(404, f"The resource 'projects/{match['project']}' was not found")
                request_id = query.get("requestId")
                if request_id and request_id in self._request_ids:
                    return 200, self._public(self.operations[self._request_ids[request_id]]), {}
                return getattr(self, "_" + name)(query=query, body=body or {}, **args)
        return self._error(404, f"no route for {method} {path}")

    def _error(self, status: int, message: str) -> Reply:
        return status, self.error_body(status, message), {}

    def _create_snapshot(self, zone: str, disk: str, query: dict[str, str], body: dict[str, Any]) -> Reply:
        if (zone, disk) not in self.disks:
            return self._error(404, f"The resource 'projects/{self.project}/zones/{zone}/disks/{disk}' was not found")
        name = body.get("name", "")
        if name in self.snapshots:
            return self._error(409, f"The resource 'projects/{self.project}/global/snapshots/{name}' already exists")
        failure = self._failures.pop(0) if self._failures else None
        target = f"{BASE}/projects/{self.project}/global/snapshots/{name}"
        op = self._new_op("createSnapshot", target, zone, query)
        op["guestFlush"] = query.get("guestFlush") == "true"
        if failure and failure.at_create:
            op["_polls"] = 10**6
            op["_error"] = failure
            return 200, self._public(op), {}
        snap = self._new_snapshot(name, body, source=self.disks[(zone, disk)])
        snap["_failure"] = failure
        op["_snapshot"] = name
        return 200, self._public(op), {}

    def _insert_snapshot(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        source = body.get("sourceDisk", "")
        match = re.search(r"zones/([^/]+)/disks/([^/]+)$", source)
        if not match or (match[1], match[2]) not in self.disks:
            return self._error(404, f"The resource '{source}' was not found")
        return self._create_snapshot(match[1], match[2], query, body)

    def _get_snapshot(self, snapshot: str, query: dict[str, str], body: Any) -> Reply:
        snap = self.snapshots.get(snapshot)
        if snap is None:
            return self._error(404, f"The resource 'projects/{self.project}/global/snapshots/{snapshot}' was not found")
        self._advance_snapshot(snap)
        return 200, self._public(snap), {}

    def _delete_snapshot(self, snapshot: str, query: dict[str, str], body: Any) -> Reply:
        snap = self.snapshots.get(snapshot)
        if snap is None:
            return self._error(404, f"The resource 'projects/{self.project}/global/snapshots/{snapshot}' was not found")
        snap["status"] = "DELETING"
        op = self._new_op("delete", snap["selfLink"], None, query)
        op["_delete"] = snapshot
        return 200, self._public(op), {}

    def _list_snapshots(self, query: dict[str, str], body: Any) -> Reply:
        wanted = self._parse_filter(query.get("filter", ""))
        if wanted is None:
            return self._error(400, f"Invalid value for field 'filter': '{query.get('filter')}'. "
                                    "Invalid list filter expression.")
        items = [s for s in self.snapshots.values() if all(s.get("labels", {}).get(k) == v for k, v in wanted.items())]
        size = min(int(query.get("maxResults") or self.page_size), self.page_size)
        start = int(query.get("pageToken") or 0)
        page = {"kind": "compute#snapshotList", "id": f"projects/{self.project}/global/snapshots",
                "items": [self._public(s) for s in items[start:start + size]],
                "selfLink": f"{BASE}/projects/{self.project}/global/snapshots"}
        if start + size < len(items):
            page["nextPageToken"] = str(start + size)
        return 200, page, {}

    def _parse_filter(self, text: str) -> dict[str, str] | None:
        """``labels.k = "v"`` terms, optionally parenthesised and joined by spaces or AND."""
        wanted = dict(_LABEL_TERM.findall(text))
        rest = re.sub(r"\bAND\b", "", _LABEL_TERM.sub("", text)).strip()
        return None if rest else wanted

    def _insert_disk(self, zone: str, query: dict[str, str], body: dict[str, Any]) -> Reply:
        name = body.get("name", "")
        if (zone, name) in self.disks:
            return self._error(409, f"The resource 'projects/{self.project}/zones/{zone}/disks/{name}' already exists")
        source = body.get("sourceSnapshot")
        snap = None
        if source:
            snap = self.snapshots.get(source.rstrip("/").rsplit("/", 1)[-1])
            if snap is None:
                return self._error(404, f"The resource '{source}' was not found")
            if snap["status"] != "READY":
                return self._error(400, f"The resource '{source}' is not ready")
        size = body.get("sizeGb") or (snap or {}).get("diskSizeGb") or "10"
        disk = self.add_disk(zone, name, int(size))
        disk.update(status="CREATING", sourceSnapshot=snap["selfLink"] if snap else None, type=body.get("type"),
                    labels=body.get("labels", {}))
        op = self._new_op("insert", disk["selfLink"], zone, query)
        op["_disk"] = (zone, name)
        return 200, self._public(op), {}

    def _aggregated_disks(self, query: dict[str, str], body: Any) -> Reply:
        """Every zone's disks matching the label filter, in one page."""
        wanted = self._parse_filter(query.get("filter", ""))
        if wanted is None:
            return self._error(400, f"Invalid value for field 'filter': '{query.get('filter')}'.")
        items: dict[str, Any] = {}
        for (zone, _), disk in self.disks.items():
            if all(disk.get("labels", {}).get(k) == v for k, v in wanted.items()):
                items.setdefault(f"zones/{zone}", {"disks": []})["disks"].append(self._public(disk))
        return 200, {"kind": "compute#diskAggregatedList", "items": items}, {}

    def _get_disk(self, zone: str, disk: str, query: dict[str, str], body: Any) -> Reply:
        found = self.disks.get((zone, disk))
        if found is None:
            return self._error(404, f"The resource 'projects/{self.project}/zones/{zone}/disks/{disk}' was not found")
        return 200, self._public(found), {}

    def _delete_disk(self, zone: str, disk: str, query: dict[str, str], body: Any) -> Reply:
        found = self.disks.get((zone, disk))
        if found is None:
            return self._error(404, f"The resource 'projects/{self.project}/zones/{zone}/disks/{disk}' was not found")
        if found.get("users"):
            status, reply, headers = self._error(
                400, f"The disk resource 'projects/{self.project}/zones/{zone}/disks/{disk}' is already being used "
                     f"by '{found['users'][0].split('/compute/v1/', 1)[-1]}'")
            reply["error"]["errors"][0]["reason"] = "resourceInUseByAnotherResource"
            return status, reply, headers
        found["status"] = "DELETING"
        op = self._new_op("delete", found["selfLink"], zone, query)
        op["_delete_disk"] = (zone, disk)
        return 200, self._public(op), {}

    def _get_instance(self, zone: str, instance: str, query: dict[str, str], body: Any) -> Reply:
        found = self.instances.get((zone, instance))
        if found is None:
            return self._error(404, f"The resource 'projects/{self.project}/zones/{zone}/instances/{instance}' "
                                    "was not found")
        return 200, self._public(found), {}

    def _attach_disk(self, zone: str, instance: str, query: dict[str, str], body: dict[str, Any]) -> Reply:
        found = self.instances.get((zone, instance))
        if found is None:
            return self._error(404, f"The resource 'projects/{self.project}/zones/{zone}/instances/{instance}' "
                                    "was not found")
        match = re.search(r"zones/([^/]+)/disks/([^/]+)$", body.get("source", ""))
        if not match or (match[1], match[2]) not in self.disks:
            return self._error(404, f"The resource '{body.get('source')}' was not found")
        if match[1] != zone:
            return self._error(400, f"Invalid value for field 'resource.source': '{body['source']}'. "
                                    "Disk must be in the same zone as the instance.")
        disk = self.disks[(match[1], match[2])]
        device = body.get("deviceName") or f"persistent-disk-{len(found['disks'])}"
        if disk.get("users"):
            status, reply, headers = self._error(
                400, f"The disk resource '{disk['selfLink'].split('/compute/v1/', 1)[-1]}' is already being used "
                     f"by '{disk['users'][0].split('/compute/v1/', 1)[-1]}'")
            reply["error"]["errors"][0]["reason"] = "resourceInUseByAnotherResource"
            return status, reply, headers
        if any(d["deviceName"] == device for d in found["disks"]):
            return self._error(400, f"Invalid value for field 'resource.deviceName': '{device}'. "
                                    "Device name is already in use.")
        found["disks"].append({"kind": "compute#attachedDisk", "type": "PERSISTENT",
                               "mode": body.get("mode", "READ_WRITE"), "source": disk["selfLink"],
                               "deviceName": device, "index": len(found["disks"]), "boot": False,
                               "autoDelete": bool(body.get("autoDelete"))})
        disk["users"] = [found["selfLink"]]
        return 200, self._public(self._new_op("attachDisk", found["selfLink"], zone, query)), {}

    def _detach_disk(self, zone: str, instance: str, query: dict[str, str], body: Any) -> Reply:
        found = self.instances.get((zone, instance))
        if found is None:
            return self._error(404, f"The resource 'projects/{self.project}/zones/{zone}/instances/{instance}' "
                                    "was not found")
        device = query.get("deviceName", "")
        attached = next((d for d in found["disks"] if d["deviceName"] == device), None)
        if attached is None:
            return self._error(400, f"Invalid value for field 'deviceName': '{device}'. "
                                    f"No attached disk found with device name '{device}'")
        found["disks"].remove(attached)
        disk = self.disks.get(tuple(attached["source"].split("/zones/", 1)[1].split("/disks/")))
        if disk is not None:
            disk["users"] = [u for u in disk.get("users", []) if u != found["selfLink"]]
        return 200, self._public(self._new_op("detachDisk", found["selfLink"], zone, query)), {}

    def _zone_op(self, zone: str, op: str, wait: str | None, query: dict[str, str], body: Any) -> Reply:
        found = self.operations.get(op)
        if found is None or found.get("_zone") != zone:
            return self._error(404, f"The resource 'projects/{self.project}/zones/{zone}/operations/{op}' "
                                    "was not found")
        return 200, self._public(self._advance_op(found)), {}

    def _global_op(self, op: str, wait: str | None, query: dict[str, str], body: Any) -> Reply:
        found = self.operations.get(op)
        if found is None or found.get("_zone") is not None:
            return self._error(404, f"The resource 'projects/{self.project}/global/operations/{op}' was not found")
        return 200, self._public(self._advance_op(found)), {}

    # --- state -------------------------------------------------------------------------------
    def _disk_link(self, zone: str, name: str) -> str:
        return f"{BASE}/projects/{self.project}/zones/{zone}/disks/{name}"

    def _new_snapshot(self, name: str, body: dict[str, Any], source: dict[str, Any] | None) -> dict[str, Any]:
        snap = {
            "kind": "compute#snapshot", "id": str(next(self._ids)), "name": name, "status": "CREATING",
            "selfLink": f"{BASE}/projects/{self.project}/global/snapshots/{name}", "creationTimestamp": _now(),
            "labels": dict(body.get("labels") or {}), "labelFingerprint": "42WmSpB8rSM=",
            "description": body.get("description", ""), "storageLocations": body.get("storageLocations") or ["eu"],
            "snapshotType": body.get("snapshotType", "STANDARD"), "diskSizeGb": (source or {}).get("sizeGb", "10"),
            "storageBytes": "0", "_polls": 0, "_failure": None,
        }
        if source:
            snap.update(sourceDisk=source["selfLink"], sourceDiskId=source["id"])
        self.snapshots[name] = snap
        return snap

    def _advance_snapshot(self, snap: dict[str, Any]) -> None:
        if snap["status"] in ("READY", "FAILED", "DELETING"):
            return
        snap["_polls"] += 1
        if snap["_polls"] > self.creating_polls + self.uploading_polls:
            snap["status"] = "FAILED" if snap["_failure"] else "READY"
            snap["storageBytes"] = "0" if snap["_failure"] else str(int(snap["diskSizeGb"]) * 2**30 // 4)
        elif snap["_polls"] > self.creating_polls:
            snap["status"] = "UPLOADING"

    def _new_op(self, kind: str, target: str, zone: str | None, query: dict[str, str]) -> dict[str, Any]:
        name = f"operation-{next(self._ids)}-{kind.lower()}"
        scope = f"{BASE}/projects/{self.project}/" + (f"zones/{zone}" if zone else "global")
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": kind,
              "targetLink": target, "status": "RUNNING", "progress": 0, "insertTime": _now(), "startTime": _now(),
              "selfLink": f"{scope}/operations/{name}", "user": "snapctl-test@example.invalid",
              "_polls": 0, "_zone": zone}
        if zone:
            op["zone"] = f"{BASE}/projects/{self.project}/zones/{zone}"
        if query.get("requestId"):
            self._request_ids[query["requestId"]] = name
        self.operations[name] = op
        return op

    def _advance_op(self, op: dict[str, Any]) -> dict[str, Any]:
        if op["status"] == "DONE":
            return op
        op["_polls"] += 1
        snap = self.snapshots.get(op.get("_snapshot", ""))
        snapshot_failed = snap is not None and snap["status"] == "FAILED"
        if op["_polls"] < self.op_running_polls and not snapshot_failed:
            op["progress"] = int(100 * op["_polls"] / max(1, self.op_running_polls))
            return op
        op.update(status="DONE", progress=100, endTime=_now())
        failure = op.get("_error") or (snap or {}).get("_failure")
        if failure:
            if snap is not None:
                snap["status"] = "FAILED"
            op.update(error={"errors": [{"code": failure.code, "message": failure.message}]},
                      httpErrorStatusCode=400 if failure.at_create else 500,
                      httpErrorMessage="BAD REQUEST" if failure.at_create else "INTERNAL SERVER ERROR")
        if op.get("_delete"):
            self.snapshots.pop(op["_delete"], None)
        if op.get("_delete_disk"):
            self.disks.pop(op["_delete_disk"], None)
        if op.get("_disk") in self.disks:
            self.disks[op["_disk"]]["status"] = "READY"
        return op

    @staticmethod
    def _public(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if not k.startswith("_") and v is not None}
