"""The fault suite's bookkeeping: decisions read from the picker's log, shares by engine address, verdicts
against the issue's targets."""

from pathlib import Path

from frontier_bench import faults


def test_decisions_come_from_the_pickers_log_and_shares_are_by_engine_address(tmp_path: Path) -> None:
    log = tmp_path / "picker.log"
    log.write_text(
        "2026-12-04 INFO frontier_picker.director event=decision request_id=a model=m target_model=m "
        "endpoints=127.6.0.1:9000,127.6.0.2:9001 prefill=- profile=p priority=0 subset=-\n"
        "2026-12-04 INFO frontier_picker.director event=decision request_id=b model=m target_model=m "
        "endpoints=127.6.0.2:9001 prefill=- profile=p priority=0 subset=-\n"
        "2026-12-04 INFO frontier_picker.processor event=refused request_id=c status=404\n"
    )
    routed = {
        match.group(1): match.group(2)
        for line in log.read_text().splitlines()
        if (match := faults._DECISION.search(line))
    }
    assert routed == {"a": "127.6.0.1:9000", "b": "127.6.0.2:9001"}
    sent = [faults.Sent("a", 1.0, 200), faults.Sent("b", 2.0, 200), faults.Sent("c", 3.0, 404)]
    engines = ["127.6.0.1:9000", "127.6.0.2:9001"]
    assert faults.shares(sent, routed, engines, (0, 10)) == {"127.6.0.1": 0.5, "127.6.0.2": 0.5}
    assert faults.shares(sent, routed, engines, (1.5, 10)) == {"127.6.0.1": 0.0, "127.6.0.2": 1.0}
    assert faults.errors(sent) == 1


def test_verdicts_name_what_missed() -> None:
    rows = {
        "engine_killed": {
            "errors_beyond_in_flight": 0,
            "in_flight_at_kill": 2,
            "decisions_to_dead_after_one_interval": 0,
            "recovery_s": 0.01,
        },
        "idle_streams_300": {
            "shift_points": 29.1,
            "pinned_engine_share": 0.04,
            "control_share": 0.33,
            "shares_last_8s": {},
        },
        "model_names_1000": {"metrics_growth_pct": 0.0, "rss_growth_pct": 1.1},
        "picker_restart_single": {
            "requests": 500,
            "client_errors": 70,
            "statuses": {"200": 430, "500": 70},
            "restarts": [{"sigterm_at": 6.0, "ready_at": 10.8}],
            "in_flight_at_sigterm": 8,
            "errors_in_flight_at_sigterm": 0,
            "sent_in_drain_delay": 18,
            "errors_in_drain_delay": 0,
            "sent_while_down": 80,
            "errors_while_down": 70,
        },
    }
    verdicts = faults.verdicts(rows)
    assert verdicts["engine_killed"].startswith("met")
    assert verdicts["idle_streams_300"].startswith("MISSED")
    assert verdicts["model_names_1000"].startswith("met")
    # A single picker's drain loses nothing it took, and the verdict says what failed while it was down.
    assert verdicts["picker_restart_single"].startswith("met")
    assert "70 of 80 sent while no picker took streams (3.8 s) failed" in verdicts["picker_restart_single"]
    assert "metrics_nan" not in verdicts  # not run, not judged
