"""NaN, infinity, numbers past any sensible ceiling and whole numbers longer than Python reads, in
the inventory and the agent config: one line naming file:line and the field, with a hint."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from node_agent.config import AgentConfigError, parse_agent_config
from node_agent.engines.base import EngineSettings
from snapctl.config import parse_inventory
from snapctl.errors import InventoryError

INVENTORY = ("cluster: c\nprovider: {type: local}\npolicy:\n  lease_ttl_s: 15s\nrpo: 24h\nnodes:\n  - name: n1\n"
             "    agent: embedded\n    engine: {type: sqlite, path: db.sqlite}\n")
AGENT = "node: n1\nengine:\n  type: sqlite\n  path: data/db.sqlite\n"
DURATION_HINT = "e.g. 30s, 15m, 24h or 7d"

POLICY_DURATIONS = ["lease_ttl_s", "max_freeze_s", "agent_timeout_s", "prepare_timeout_s", "trigger_timeout_s",
                    "snapshot_timeout_s", "wait_timeout_s", "max_snapshot_busy_s", "lock_ttl_s", "hold_lead_s"]


def refused(text: str) -> InventoryError:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, source="inv.yaml")
    assert "\n" not in caught.value.message
    return caught.value


@pytest.mark.parametrize("field", POLICY_DURATIONS)
@pytest.mark.parametrize(("value", "said"), [(".nan", "nan is not a finite duration"),
                                             (".inf", "inf is not a finite duration"),
                                             ("1.0e+300", "at most 3650d (ten years), not 1e+300"),
                                             ("99999d", "at most 3650d (ten years), not '99999d'"),
                                             ("9" * 400, "at most 3650d (ten years), not 999999")])
def test_every_policy_duration_refuses_nan_infinity_and_past_ten_years(field, value, said):
    # NaN passed every `<= 0` check: lock_ttl_s and agent_timeout_s came out as tracebacks,
    # prepare_timeout_s and lease_ttl_s held the cluster and failed the run, the rest were taken.
    # 400 digits: float() of it raised OverflowError, a traceback.
    error = refused(INVENTORY.replace("  lease_ttl_s: 15s\n", f"  {field}: {value}\n"))
    assert error.message.startswith(f"inv.yaml:4: policy.{field}: {said}")
    assert error.hint == DURATION_HINT


@pytest.mark.parametrize(("block", "where"), [("rpo: .nan\n", "inv.yaml:9: rpo"),
                                              ("drill: {max_age_s: .nan}\n", "inv.yaml:9: drill.max_age_s"),
                                              ("drill: {max_age_s: .inf}\n", "inv.yaml:9: drill.max_age_s"),
                                              ("drill: {timeout_s: .inf}\n", "inv.yaml:9: drill.timeout_s"),
                                              ("drill: {start_timeout_s: .nan}\n",
                                               "inv.yaml:9: drill.start_timeout_s")])
def test_the_rpo_and_the_drill_durations_refuse_nan_and_infinity(block, where):
    # `rpo: .nan` turned the RPO check off: status said "(RPO nand)" and healthy, whatever the age.
    error = refused(INVENTORY.replace("rpo: 24h\n", "") + block)
    assert error.message.startswith(f"{where}: ") and "is not a finite duration" in error.message
    assert error.hint == DURATION_HINT


def test_a_ten_year_duration_is_still_taken():
    inventory = parse_inventory(INVENTORY.replace("rpo: 24h", "rpo: 3650d") + "drill: {max_age_s: 52w}\n")
    assert (inventory.rpo, inventory.drill.max_age_s) == (3650 * 86400, 52 * 604800)


def test_a_negative_follower_lag_is_refused():
    error = refused(INVENTORY.replace("  lease_ttl_s: 15s\n", "  max_follower_lag: -5\n"))
    assert error.message == "inv.yaml:4: policy.max_follower_lag: must be 0 or more, not -5"
    assert error.hint == "a number of raft entries, e.g. 10000 (the default)"
    caught_up = parse_inventory(INVENTORY.replace("  lease_ttl_s: 15s\n", "  max_follower_lag: 0\n"))
    assert caught_up.policy.max_follower_lag == 0


@pytest.mark.parametrize(("value", "said", "hint"), [
    (".nan", "input should be a finite number", "give a number such as 10: YAML's .nan and .inf are none"),
    (".inf", "input should be a finite number", "give a number such as 10: YAML's .nan and .inf are none"),
    ("1.0e+300", "at most 315360000 seconds (ten years), not 1e+300", "a number of seconds, e.g. 10"),
])
def test_an_engine_block_in_the_inventory_refuses_nan_infinity_and_past_ten_years(value, said, hint):
    # `timeout_s: .nan` said "input should be greater than 0"; .inf passed.
    inventory = parse_inventory(INVENTORY.replace("type: sqlite,", f"type: sqlite, timeout_s: {value},"),
                                source="inv.yaml")
    with pytest.raises(InventoryError) as caught:
        inventory.check_engine_blocks()
    assert caught.value.message == f"inv.yaml:9: node n1: engine sqlite: timeout_s: {said}"
    assert caught.value.hint == hint


@pytest.mark.parametrize(("text", "expected", "hint"), [
    (AGENT + "  timeout_s: .inf\n", "agent.yaml:5: engine sqlite: timeout_s: input should be a finite number",
     "give a number such as 10: YAML's .nan and .inf are none"),
    (AGENT + "  timeout_s: .nan\n", "agent.yaml:5: engine sqlite: timeout_s: input should be a finite number",
     "give a number such as 10: YAML's .nan and .inf are none"),
    (AGENT + "  timeout_s: 1.0e+300\n",
     "agent.yaml:5: engine sqlite: timeout_s: at most 315360000 seconds (ten years), not 1e+300",
     "a number of seconds, e.g. 10"),
    (AGENT + "rate_per_s: .inf\n", "agent.yaml:5: rate_per_s: input should be a finite number",
     "give a number such as 10: YAML's .nan and .inf are none"),
    (AGENT + "rate_per_s: .nan\n", "agent.yaml:5: rate_per_s: input should be a finite number",
     "give a number such as 10: YAML's .nan and .inf are none"),
])
def test_every_float_of_the_agent_config_refuses_nan_and_infinity(text, expected, hint):
    # `timeout_s: .inf` was an OverflowError traceback as the agent started (int(timeout_s) for
    # uvicorn's shutdown grace); `rate_per_s: .inf` started an agent.
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config(text, source="agent.yaml")
    assert (caught.value.message, caught.value.hint) == (expected, hint)


LONG = "9" * 5000
LONG_SAID = "a whole number of 5000 digits, longer than Python reads (4300 at most)"
LONG_HINT = "no setting takes a number that long: give the one meant, in a few digits"


@pytest.mark.parametrize(("text", "expected"), [
    (INVENTORY.replace("lease_ttl_s: 15s", f"lease_ttl_s: {LONG}"), f"inv.yaml:4: policy.lease_ttl_s: {LONG_SAID}"),
    (INVENTORY.replace("rpo: 24h", f"rpo: -{LONG}"), f"inv.yaml:5: rpo: {LONG_SAID}"),
    # an alias: the whole document goes through PyYAML's own constructor
    (INVENTORY.replace("lease_ttl_s: 15s", f"lease_ttl_s: &n {LONG}") + "tags: {a: *n}\n",
     f"inv.yaml:4: policy.lease_ttl_s: {LONG_SAID}"),
    (f"cluster: c\nprovider: {{type: local}}\nnodes:\n  - {LONG}\n", f"inv.yaml:4: nodes[0]: {LONG_SAID}"),
])
def test_a_whole_number_longer_than_python_reads_is_one_line_in_the_inventory(text, expected):
    # "Exceeds the limit (4300 digits) for integer string conversion": a traceback, and -o json no document.
    error = refused(text)
    assert (error.message, error.hint) == (expected, LONG_HINT)


def test_a_whole_number_longer_than_python_reads_is_one_line_in_the_agent_config():
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config(AGENT + f"port: {LONG}\n", source="agent.yaml")
    assert (caught.value.message, caught.value.hint) == (f"agent.yaml:5: port: {LONG_SAID}", LONG_HINT)


class _RatioSettings(EngineSettings):
    """A third-party adapter's settings with a float that is no duration."""

    type: str = "ratio"
    ratio: float = 0.5


def test_only_an_adapters_durations_are_capped_at_ten_years_and_every_float_stays_finite():
    # Every float of every adapter's settings was taken for seconds: `ratio: 1e12` was refused as
    # "at most 315360000 seconds (ten years)".
    assert _RatioSettings.model_validate({"ratio": 1e12}).ratio == 1e12
    with pytest.raises(ValidationError, match="finite number"):
        _RatioSettings.model_validate({"ratio": float("inf")})
    with pytest.raises(ValidationError, match=r"at most 315360000 seconds \(ten years\), not 1e\+300"):
        _RatioSettings.model_validate({"timeout_s": 1e300})
