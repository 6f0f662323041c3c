import pytest

from snapctl.units import human_bytes


@pytest.mark.parametrize(("value", "shown"), [
    (None, "-"),
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (5 * 2**30, "5.0 GiB"),
    (3 * 2**40, "3.0 TiB"),
    (2048 * 2**40, "2048.0 TiB"),  # no unit past TiB: a count of TiB, not "2.0 ?"
])
def test_human_bytes(value, shown):
    assert human_bytes(value) == shown


def test_human_bytes_names_small_counts_as_asked():
    assert human_bytes(300, unit="bytes") == "300 bytes"
    assert human_bytes(2 * 2**20, unit="bytes") == "2.0 MiB"
