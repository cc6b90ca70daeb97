"""systemd/70-edgegate.rules: every device rule has the shape the deployment relies on.

udevadm cannot check rules offline before systemd 254 (``udevadm verify``), so this reads
each device rule as udev does (comma-separated KEY<op>"value" pairs) and checks what it sets.
"""

from __future__ import annotations

import re
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "systemd" / "70-edgegate.rules"


def test_the_udev_rules_give_every_device_a_stable_name_group_mode_and_no_modemmanager() -> None:
    rules = RULES.read_text(encoding="utf-8")
    device_rules = [
        line for line in rules.splitlines() if line.startswith("SUBSYSTEM==") and "SYMLINK" in line
    ]
    assert len(device_rules) >= 4
    pair = re.compile(r'^(\w+(?:\{\w+\})?)(==|!=|\+=|:=|=)"([^"]*)"$')
    for rule in device_rules:
        keys = {}
        for part in rule.split(", "):
            match = pair.match(part)
            assert match, f'not KEY<op>"value": {part!r} in {rule!r}'
            keys[match.group(1)] = match.group(3)
        assert keys["SYMLINK"].startswith("edgegate/")
        assert (keys["GROUP"], keys["MODE"]) == ("edgegate", "0660")
        assert "ENV{ID_VENDOR_ID}" in keys
        assert "ENV{ID_MODEL_ID}" in keys
        # Told apart by serial number, or (CH340 without one) by the USB port.
        assert "ENV{ID_SERIAL_SHORT}" in keys or "ENV{ID_PATH}" in keys
        if keys["SUBSYSTEM"] == "tty":
            assert keys["ENV{ID_MM_DEVICE_IGNORE}"] == "1"
    ch340 = [rule for rule in device_rules if 'ENV{ID_VENDOR_ID}=="1a86"' in rule]
    assert ch340
    assert all("ENV{ID_PATH}==" in rule for rule in ch340)
    assert 'ACTION=="remove", GOTO="edgegate_end"' in rules
    assert rules.rstrip().endswith('LABEL="edgegate_end"')
