"""What the tools share: their parser, trailing config overrides and the --input split."""

import pytest

from dental_d2.cli import add_config_overrides, split_overrides, tool_parser


def test_parser_takes_the_config_file_and_trailing_overrides():
    parser = tool_parser("Does one thing.\n\nAt length.", config_help="a dental config")
    add_config_overrides(parser, "MODEL.DEVICE cpu", scope="for every fold")
    args = parser.parse_args(["--config-file", "c.yaml", "MODEL.DEVICE", "cpu"])
    assert parser.description == "Does one thing."
    assert args.config_file == "c.yaml" and args.opts == ["MODEL.DEVICE", "cpu"]
    assert "for every fold (e.g. MODEL.DEVICE cpu)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --config-file is required
    assert not hasattr(tool_parser("No config.").parse_args([]), "config_file")


def test_overrides_taken_by_input_are_given_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MODEL.png").write_bytes(b"")  # an existing file that looks like a key
    inputs, opts = split_overrides(
        ["a.png", "MODEL.png", "MODEL.DEVICE", "cpu"], ["DENTAL.LOG_PERIOD", "5"]
    )
    assert inputs == ["a.png", "MODEL.png"]
    assert opts == ["MODEL.DEVICE", "cpu", "DENTAL.LOG_PERIOD", "5"]
    assert split_overrides(["a.png", "photos/"], []) == (["a.png", "photos/"], [])
