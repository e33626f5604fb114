"""Monitoring Plugins output parsing: summary, perfdata on any line, quoting, UOMs."""

from __future__ import annotations

from agent.checks.perfdata import PerfValue, metric_name, parse_perfdata, split_output


def test_summary_and_perfdata_on_the_first_line() -> None:
    summary, perf = split_output(
        "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n"
    )
    assert summary == "DISK OK - free space: / 3326 MB (56%);"
    assert perf == "/=2643MB;5948;5958;0;5968"


def test_perfdata_on_long_output_lines() -> None:
    # The example from the plugin guidelines: perfdata after '|' on a later line, then every
    # following line is perfdata too.
    out = (
        "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n"
        "/ 15272 MB (77%);\n"
        "/boot 68 MB (69%);\n"
        "/home 69357 MB (27%);\n"
        "/var/log 819 MB (84%); | /boot=68MB;88;93;0;98\n"
        "/home=69357MB;253404;253409;0;253414\n"
        "/var/log=818MB;970;975;0;980\n"
    )
    summary, perf = split_output(out)
    assert summary.startswith("DISK OK")
    labels = [(p.label, p.value, p.uom) for p in parse_perfdata(perf)]
    assert labels == [
        ("/", 2643.0, "MB"), ("/boot", 68.0, "MB"), ("/home", 69357.0, "MB"),
        ("/var/log", 818.0, "MB"),
    ]  # fmt: skip


def test_no_output_and_no_perfdata() -> None:
    assert split_output("") == ("", "")
    assert split_output("OK all fine\nmore text\n") == ("OK all fine", "")


def test_quoted_labels_uoms_and_missing_fields() -> None:
    perf = (
        "'in use'=5%;80;90 'it''s'=1 time=0.25s;;;0 rt=12ms "
        "'big one'=1.5e3B;;;; count=7c tiny=3us neg=-1.5 plain=4 kb=2KB gb=1GB tb=2TB"
    )
    got = parse_perfdata(perf)
    assert got == [
        PerfValue("in use", 5.0, "%"), PerfValue("it's", 1.0, ""), PerfValue("time", 0.25, "s"),
        PerfValue("rt", 12.0, "ms"), PerfValue("big one", 1500.0, "B"),
        PerfValue("count", 7.0, "c"), PerfValue("tiny", 3.0, "us"), PerfValue("neg", -1.5, ""),
        PerfValue("plain", 4.0, ""), PerfValue("kb", 2.0, "KB"), PerfValue("gb", 1.0, "GB"),
        PerfValue("tb", 2.0, "TB"),
    ]  # fmt: skip


def test_unparseable_items_are_skipped_not_fatal() -> None:
    got = parse_perfdata("undetermined=U;1;2 stray =5 junk=abc ok=1 'unterminated=3")
    assert [p.label for p in got] == ["ok"]


def test_metric_names_are_sanitised() -> None:
    assert metric_name("/var/log") == "_var_log"
    assert metric_name("In Use") == "in_use"
    assert metric_name("load_1") == "load_1"
    assert metric_name("rta-ms") == "rta_ms"
