import pytest

from moetheory import cli, experiments


def test_list_names_every_reproduction(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("softmax-rates", "latent-clusters", "soft-routed", "expressivity"):
        assert name in out and name in experiments.REPRODUCTIONS


def test_unknown_reproduction_is_an_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "no-such-paper", "--quick"])
    assert "unknown reproduction" in capsys.readouterr().err


def test_summary_tables_are_per_reproduction_and_shortened(capsys):
    cli._print_table([{"reproduction": "a", "slope": -0.5, "note": "x" * 200},
                      {"reproduction": "b", "count": 3}])
    out = capsys.readouterr().out
    assert "x" * 45 + "..." in out and "x" * 46 not in out  # 48 characters at most
    block_a, block_b = out.split("\nb\n")
    assert "count" not in block_a and "note" not in block_b
