"""A local Azure Resource Manager for Microsoft.Compute snapshots and disks (the JSON that
azure-mgmt-compute speaks).

- PUT and DELETE answer 202 with absolute ``Azure-AsyncOperation`` and ``Location`` URLs; the
  operation answers ``InProgress`` for ``op_polls`` GETs, then ``Succeeded`` or ``Failed`` with the
  cloud's error;
- a snapshot's ``provisioningState`` is ``Creating`` for ``provisioning_polls`` GETs, then
  ``Succeeded`` (or ``Failed``); ``completionPercent`` then climbs to 100 over ``copy_polls`` more
  GETs while ``snapshotAccessState`` is ``Pending`` (the background copy of Premium v2 / Ultra);
- resource paths are case-insensitive like ARM's, list pages follow ``nextLink``; with
  ``upper_group_ids`` the ``id`` of every resource names its resource group in capitals, as the
  Compute resource provider often answers (``/resourceGroups/RG-DB/...`` for a group made as
  ``rg-db``): ids are to be compared case-insensitively;
- a disk attached to a VM (``managedBy``) refuses DELETE with 409 ``OperationNotAllowed``, as ARM does;
- virtual machines (``add_vm``): GET, and PUT/PATCH of ``storageProfile.dataDisks``, which attaches
  and detaches managed disks (their ``managedBy``), refusing a disk another VM holds and a LUN twice;
- a PUT's tags are held to ARM's rules: at most 50, names of 1-512 characters without
  ``<>%&\\?/``, values of at most 256 characters, names unique ignoring case (400, as ARM refuses
  them: ``InvalidTagValueLength`` with its wording; the other codes are the fake's);
- every request needs a bearer token; faults from ``JsonHttpFake`` (429 + Retry-After, 403).
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tests.fakes.json_http import Fault, JsonHttpFake, Reply

SUB = r"^/subscriptions/(?P<sub>[^/]+)"
GROUP = SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/(?P<kind>snapshots|disks|virtualMachines)"
RESOURCE = GROUP + r"/(?P<name>[^/]+)$"
COLLECTION = GROUP + r"$"
OPERATION = SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)$"
CODES = {400: "InvalidParameter", 401: "AuthenticationFailed", 403: "AuthorizationFailed", 404: "ResourceNotFound",
         409: "Conflict", 429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}
MAX_TAGS, MAX_TAG_VALUE = 50, 256  # ARM's, per resource and per value
TYPES = {"snapshots": "Microsoft.Compute/snapshots", "disks": "Microsoft.Compute/disks",
         "virtualmachines": "Microsoft.Compute/virtualMachines"}


@dataclass
class Failure:
    message: str
    code: str = "InternalDiskManagementError"


class StaticTokenCredential:
    """Stands in for DefaultAzureCredential: any bearer token satisfies the fake."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("fake-token-for-tests", int(time.time()) + 3600)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class FakeAzureCompute(JsonHttpFake):
    def __init__(self, subscription: str = "00000000-0000-4000-8000-000000000001", *, op_polls: int = 2,
                 provisioning_polls: int = 1, copy_polls: int = 0, page_size: int = 100,
                 upper_group_ids: bool = False) -> None:
        super().__init__()
        self.upper_group_ids = upper_group_ids
        self.subscription = subscription
        self.op_polls = op_polls
        self.provisioning_polls = provisioning_polls
        self.copy_polls = copy_polls
        self.page_size = page_size
        self.resources: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, rg, name) lowercased
        self.operations: dict[str, dict[str, Any]] = {}
        self._failures: list[Failure] = []
        self._ids = itertools.count(1)

    # --- setup and injection -----------------------------------------------------------------
    def resource_id(self, rg: str, kind: str, name: str) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/{TYPES[kind]}/{name}"

    def add_disk(self, rg: str, name: str, *, location: str = "westeurope", size_gb: int = 32,
                 tags: dict[str, str] | None = None, managed_by: str | None = None) -> str:
        """``managed_by``: the name of a VM (in ``rg``) the disk is attached to."""
        with self.lock:
            body = {"location": location, "tags": tags or {}, "properties": {"creationData": {"createOption": "Empty"}}}
            disk = self._new("disks", rg, name, body)
            disk["properties"].update(diskSizeGB=size_gb, provisioningState="Succeeded", diskState="Attached")
            if managed_by:
                disk["managedBy"] = (f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/"
                                     f"Microsoft.Compute/virtualMachines/{managed_by}")
            return disk["id"]

    def add_vm(self, rg: str, name: str, *, location: str = "westeurope", zones: list[str] | None = None) -> str:
        with self.lock:
            body = {"location": location, "properties": {
                "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
                "storageProfile": {"osDisk": {"osType": "Linux", "name": f"{name}-os", "createOption": "FromImage"},
                                   "dataDisks": []}}}
            if zones:
                body["zones"] = zones
            vm = self._new("virtualmachines", rg, name, body)
            vm["properties"].update(provisioningState="Succeeded", vmId=str(uuid.uuid4()))
            return vm["id"]

    def data_disks(self, rg: str, vm: str) -> dict[int, str]:
        """The VM's data disks: LUN -> disk name."""
        with self.lock:
            found = self.resources[("virtualmachines", rg.lower(), vm.lower())]
            return {d["lun"]: d["managedDisk"]["id"].rsplit("/", 1)[-1]
                    for d in found["properties"]["storageProfile"]["dataDisks"]}

    def add_snapshot(self, rg: str, name: str, *, tags: dict[str, str] | None = None,
                     location: str = "westeurope") -> str:
        with self.lock:
            body = {"location": location, "tags": tags or {}, "properties": {"incremental": True}}
            snap = self._new("snapshots", rg, name, body)
            snap["properties"].update(provisioningState="Succeeded", completionPercent=100.0)
            snap["_polls"] = 10**6
            return snap["id"]

    def snapshots(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {r["name"]: r for (kind, _, _), r in self.resources.items() if kind == "snapshots"}

    def disks(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {r["name"]: r for (kind, _, _), r in self.resources.items() if kind == "disks"}

    def fail_next_snapshot(self, message: str, *, code: str = "InternalDiskManagementError") -> None:
        """The next snapshot PUT is accepted, then ends ``Failed`` with ``message``."""
        with self.lock:
            self._failures.append(Failure(message, code))

    def deny(self, action: str, *, method: str | None = None, path_contains: str | None = None,
             times: int = 1) -> Fault:
        message = (f"The client 'snapctl-test' with object id '{uuid.uuid4()}' does not have authorization to perform "
                   f"action '{action}' over scope '/subscriptions/{self.subscription}' or the scope is invalid. "
                   "If access was recently granted, please refresh your credentials.")
        return self.inject(Fault(403, times, None, method, path_contains, message=message))

    # --- wire format -------------------------------------------------------------------------
    def error_body(self, status: int, message: str, fault: Fault | None = None) -> Any:
        code = (fault.extra.get("code") if fault else None) or CODES.get(status, "InternalServerError")
        return {"error": {"code": code, "message": message}}

    def _error(self, status: int, message: str, code: str | None = None) -> Reply:
        return status, {"error": {"code": code or CODES.get(status, "InternalServerError"), "message": message}}, {}

    def route(self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str]) -> Reply:
        if not headers.get("authorization", "").startswith("Bearer "):
            return self._error(401, "Authentication failed. The 'Authorization' header is missing.")
        if "api-version" not in query:
            return self._error(400, "The api-version query parameter (?api-version=) is required for all requests.",
                               "MissingApiVersionParameter")
        self.api_version = query["api-version"]
        routes = ((RESOURCE, self._resource), (COLLECTION, self._collection), (OPERATION, self._operation))
        for pattern, handler in routes:
            match = re.match(pattern, path, re.IGNORECASE)
            if match:
                args = match.groupdict()
                if args.pop("sub").lower() != self.subscription.lower():
                    return self._error(404, f"The subscription '{match['sub']}' could not be found.",
                                       "SubscriptionNotFound")
                return handler(method, query=query, body=body, **args)
        return self._error(404, f"No HTTP resource was found that matches the request URI '{path}'.", "NotFound")

    def _resource(self, method: str, rg: str, kind: str, name: str, query: dict[str, str], body: Any) -> Reply:
        kind = kind.lower()
        key = (kind, rg.lower(), name.lower())
        found = self.resources.get(key)
        if method == "GET":
            if found is None:
                return self._not_found(kind, rg, name)
            self._advance(found)
            return 200, self._public(found), {}
        if kind == "virtualmachines":
            if found is None:
                return self._not_found(kind, rg, name)
            if method in ("PUT", "PATCH"):
                return self._update_vm(found, body or {})
            return self._error(405, f"method {method} is not allowed", "MethodNotAllowed")
        if method == "DELETE":
            if found is None:
                return self._not_found(kind, rg, name)
            if found.get("managedBy"):
                return self._error(409, f"Disk {name} is attached to VM {found['managedBy']}.", "OperationNotAllowed")
            found["properties"]["provisioningState"] = "Deleting"
            return self._accepted(self._new_op(found, delete=True))
        if method == "PUT":
            return self._put(kind, rg, name, body or {})
        return self._error(405, f"method {method} is not allowed", "MethodNotAllowed")

    def _update_vm(self, vm: dict[str, Any], body: dict[str, Any]) -> Reply:
        """Only the data disks change: each listed one is attached (``managedBy``), each dropped one detached."""
        wanted = ((body.get("properties") or {}).get("storageProfile") or {}).get("dataDisks")
        if wanted is None:
            _, reply, headers = self._accepted(self._new_op(vm), self._public(vm))
            return 200, reply, headers
        disks, luns = [], set()
        for entry in wanted:
            disk_id = (entry.get("managedDisk") or {}).get("id", "")
            disk = next((r for r in self.resources.values() if r["id"].lower() == disk_id.lower()), None)
            if disk is None:
                return self._error(404, f"Resource {disk_id} not found.", "NotFound")
            if disk.get("managedBy") and disk["managedBy"].lower() != vm["id"].lower():
                return self._error(409, f"Disk {disk['name']} is already attached to VM {disk['managedBy']}.",
                                   "OperationNotAllowed")
            if entry.get("lun") in luns:
                return self._error(400, f"A disk at LUN {entry.get('lun')} already exists.", "InvalidParameter")
            luns.add(entry.get("lun"))
            disks.append((disk, {"lun": entry.get("lun"), "name": disk["name"], "createOption": "Attach",
                                 "caching": entry.get("caching") or "None",
                                 "managedDisk": {"id": disk["id"], "storageAccountType": "Standard_LRS"},
                                 "diskSizeGB": disk["properties"].get("diskSizeGB")}))
        kept = {disk["id"].lower() for disk, _ in disks}
        for resource in self.resources.values():
            managed_by = resource.get("managedBy") or ""
            if managed_by.lower() == vm["id"].lower() and resource["id"].lower() not in kept:
                resource.pop("managedBy")
                resource["properties"]["diskState"] = "Unattached"
        for disk, _ in disks:
            disk["managedBy"] = vm["id"]
            disk["properties"]["diskState"] = "Attached"
        vm["properties"]["storageProfile"]["dataDisks"] = [entry for _, entry in disks]
        vm["properties"]["provisioningState"] = "Updating"
        _, reply, headers = self._accepted(self._new_op(vm), self._public(vm))
        return 200, reply, headers  # ARM answers a VM update 200 (the SDK accepts nothing else), polled like a 202

    def _not_found(self, kind: str, rg: str, name: str) -> Reply:
        return self._error(404, f"The Resource '{TYPES[kind]}/{name}' under resource group '{rg}' was not found. "
                                "For more details please go to https://aka.ms/ARMResourceNotFoundFix")

    def _tags_refused(self, tags: dict[str, str]) -> Reply | None:
        if len(tags) > MAX_TAGS:
            return self._error(400, f"The resource has {len(tags)} tags; at most {MAX_TAGS} are allowed.",
                               "InvalidTagCount")
        if len({key.lower() for key in tags}) < len(tags):
            return self._error(400, "Tag names must be unique; they are case-insensitive.", "InvalidTagName")
        for key, value in tags.items():
            if not 1 <= len(key) <= 512 or re.search(r"[<>%&\\?/]", key):
                return self._error(400, f"The tag names '{key}' have reserved characters '<,>,%,&,\\,?,/' or "
                                        "control characters, or more than 512 characters.", "InvalidTagNameCharacters")
            if len(value) > MAX_TAG_VALUE:
                return self._error(400, f"Tag value too large.  Following tag value '{value}' exceeded the maximum "
                                        f"length. Maximum allowed length for tag value - '{MAX_TAG_VALUE}' characters.",
                                   "InvalidTagValueLength")
        return None

    def _put(self, kind: str, rg: str, name: str, body: dict[str, Any]) -> Reply:
        if not body.get("location"):
            return self._error(400, "Required parameter 'location' is missing (null).", "LocationRequired")
        refused = self._tags_refused(body.get("tags") or {})
        if refused is not None:
            return refused
        creation = (body.get("properties") or {}).get("creationData") or {}
        source_id = creation.get("sourceResourceId", "")
        source = next((r for r in self.resources.values() if r["id"].lower() == source_id.lower()), None)
        if creation.get("createOption") == "Copy" and source is None:
            return self._error(404, f"Resource {source_id} not found.", "NotFound")
        if kind == "disks" and source is not None and source["properties"].get("provisioningState") != "Succeeded":
            return self._error(409, f"Snapshot {source['name']} is not ready.", "Conflict")
        resource = self._new(kind, rg, name, body)
        props = resource["properties"]
        props.update(provisioningState="Creating" if kind == "snapshots" else "Updating",
                     diskSizeGB=(source or {}).get("properties", {}).get("diskSizeGB", 32))
        if kind == "snapshots":
            props.update(completionPercent=0.0)
            resource["_failure"] = self._failures.pop(0) if self._failures else None
        else:
            resource["_polls"] = self.provisioning_polls  # disks: the operation decides
        return self._accepted(self._new_op(resource), self._public(resource))

    def _collection(self, method: str, rg: str, kind: str, query: dict[str, str], body: Any) -> Reply:
        if method != "GET":
            return self._error(405, f"method {method} is not allowed", "MethodNotAllowed")
        items = [r for (k, g, _), r in self.resources.items() if k == kind.lower() and g == rg.lower()]
        start = int(query.get("$skiptoken") or 0)
        page: dict[str, Any] = {"value": [self._public(r) for r in items[start:start + self.page_size]]}
        if start + self.page_size < len(items):
            page["nextLink"] = (f"{self.url}/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/"
                                f"{TYPES[kind.lower()]}?api-version={query['api-version']}"
                                f"&$skiptoken={start + self.page_size}")
        return 200, page, {}

    def _operation(self, method: str, loc: str, op: str, query: dict[str, str], body: Any) -> Reply:
        found = self.operations.get(op)
        if found is None or method != "GET":
            return self._error(404, f"operation {op} not found", "NotFound")
        found["_polls"] += 1
        failed = found["_resource"]["properties"].get("provisioningState") == "Failed"
        if found["status"] == "InProgress" and (found["_polls"] >= self.op_polls or failed):
            self._finish(found)
        return 200, self._public(found), {}

    # --- state -------------------------------------------------------------------------------
    def _new(self, kind: str, rg: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        resource = {
            "id": self.resource_id(rg.upper() if self.upper_group_ids else rg, kind, name), "name": name,
            "type": TYPES[kind], "location": body["location"],
            "tags": dict(body.get("tags") or {}),
            "sku": body.get("sku") or {"name": "Standard_LRS", "tier": "Standard"},
            "properties": {**(body.get("properties") or {}), "timeCreated": _now(), "uniqueId": str(uuid.uuid4())},
            "_polls": 0, "_failure": None,
        }
        if body.get("zones"):
            resource["zones"] = body["zones"]
        self.resources[(kind, rg.lower(), name.lower())] = resource
        return resource

    def _advance(self, resource: dict[str, Any]) -> None:
        props = resource["properties"]
        if resource["type"] != TYPES["snapshots"] or props["provisioningState"] in ("Failed", "Deleting"):
            return
        resource["_polls"] += 1
        polls = resource["_polls"]
        if polls <= self.provisioning_polls:
            return
        if resource["_failure"]:
            props["provisioningState"] = "Failed"
            return
        props["provisioningState"] = "Succeeded"
        copied = polls - self.provisioning_polls
        props["completionPercent"] = 100.0 if copied >= self.copy_polls else round(100.0 * copied / self.copy_polls, 1)
        if self.copy_polls:
            props["snapshotAccessState"] = "Available" if copied >= self.copy_polls else "Pending"

    def _new_op(self, resource: dict[str, Any], delete: bool = False) -> dict[str, Any]:
        op = {"name": str(uuid.uuid4()), "status": "InProgress", "startTime": _now(), "_polls": 0,
              "_resource": resource, "_delete": delete, "_location": resource["location"]}
        self.operations[op["name"]] = op
        return op

    def _finish(self, op: dict[str, Any]) -> None:
        resource = op["_resource"]
        op["endTime"] = _now()
        if op["_delete"]:
            self.resources = {k: r for k, r in self.resources.items() if r is not resource}
            op["status"] = "Succeeded"
            return
        failure = resource.get("_failure")
        if failure:
            resource["properties"]["provisioningState"] = "Failed"
            op.update(status="Failed", error={"code": failure.code, "message": failure.message})
            return
        resource["_polls"] = max(resource["_polls"], self.provisioning_polls)
        if resource["type"] == TYPES["snapshots"]:
            self._advance(resource)
        else:
            resource["properties"]["provisioningState"] = "Succeeded"
        op.update(status="Succeeded", properties={"output": self._public(resource)})

    def _accepted(self, op: dict[str, Any], body: Any = None) -> Reply:
        url = (f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/locations/{op['_location']}"
               f"/operations/{op['name']}?p={next(self._ids)}&api-version={self.api_version}")
        return 202, body, {"Azure-AsyncOperation": url, "Location": url + "&monitor=true"}

    @staticmethod
    def _public(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if not k.startswith("_")}
