"""Selector messages: what a selector that matches nothing, or an unknown device id, tells the user."""

from __future__ import annotations

from edgefleet.fleet.selectors import Selector, explain_no_match, explain_unknown_device


def test_a_mistyped_device_id_or_value_gets_the_closest_known_one() -> None:
    known = [("pi-0001", "rpi4", {"site": "lab"}), ("pi-0002", "rpi4", {"site": "office"})]
    text = explain_no_match(Selector.parse("id=pi-00002,site=ofice"), known)
    assert "id: did you mean 'pi-0002'? pi-0001, pi-0002" in text
    assert "site: did you mean 'office'? lab, office" in text
    assert "did you mean" not in explain_no_match(Selector.parse("id=jn-*"), known)  # a pattern, not a typo
    assert explain_unknown_device("pi-00011", ["pi-0001", "pi-0002"]).startswith(
        "device 'pi-00011' is not known on this broker (did you mean 'pi-0001'? 2 known"
    )
    assert "no device has announced itself" in explain_unknown_device("pi-0003", [])
