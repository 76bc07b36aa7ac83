"""search/trial/echo.py: the worker echoes a trial's class table once, then says it is unchanged."""

from __future__ import annotations

import io

from search.trial.echo import Echo

TABLE = ["volumes per class and split (data.classes would pin the classes):\n",
         "class   train  val\n", "normal     12    2\n", "total      12    2\n"]


def test_a_class_table_already_shown_is_one_line_and_a_different_one_is_shown() -> None:
    out = io.StringIO()
    for lines in (["startup\n", *TABLE, "epoch 1\n"], [*TABLE, "epoch 1\n"],
                  [*TABLE[:2], "normal     11    3\n", TABLE[3]]):
        echo = Echo(out, "[t] ")
        for line in lines:
            echo.write(line)
        echo.close()
    shown = out.getvalue().splitlines()
    assert shown[:6] == ["[t] startup", *("[t] " + t.rstrip("\n") for t in TABLE), "[t] epoch 1"]
    assert shown[6:8] == ["[t] volumes per class and split: as shown for an earlier trial", "[t] epoch 1"]
    assert shown[8:] == ["[t] " + t.rstrip("\n") for t in [*TABLE[:2], "normal     11    3\n", TABLE[3]]]


def test_an_unfinished_block_is_echoed_as_it_is() -> None:
    out = io.StringIO()
    echo = Echo(out, "")
    for line in TABLE[:2]:  # the process died inside the table
        echo.write(line)
    assert out.getvalue() == ""
    echo.close()
    assert out.getvalue() == "".join(TABLE[:2])
