"""perf script -> folded stacks -> pprof and a flame graph."""

from __future__ import annotations

import gzip
from collections import Counter

from coral_base.wire.pprof import profile_pb2
from cri_agent.ops.stacks import StackFolder, flame_graph_svg, fold_perf_script, folded_text, pprof

PERF_SCRIPT = """busy 11967/11967
\t            1635 leaf_hot+0x19 (/tmp/busy)
\t            1661 [unknown] (/tmp/busy)
\t            1994 __libc_start_call_main (/tmp/busy)

busy 11967/11967
\t            1635 leaf_hot (/tmp/busy)
\t            1661 [unknown] (/tmp/busy)
\t            1994 __libc_start_call_main (/tmp/busy)

sh 12000/12000
\tffffffff81000000 [unknown] ([unknown])
"""


def test_perf_script_folds_root_first_with_offsets_dropped() -> None:
    assert fold_perf_script(PERF_SCRIPT) == Counter(
        {"busy;__libc_start_call_main;[busy];leaf_hot": 2, "sh;[unknown]": 1}
    )


def test_pprof_holds_every_sample_leaf_first() -> None:
    folded = Counter({"busy;main;leaf_hot": 3, "busy;main": 1})
    profile = profile_pb2.Profile.FromString(gzip.decompress(pprof(folded, frequency_hz=49, duration_s=3, time_ns=1)))
    names = profile.string_table
    stacks = {
        tuple(names[profile.function[location - 1].name] for location in sample.location_id): sample.value[0]
        for sample in profile.sample
    }
    assert names[0] == "" and stacks == {("leaf_hot", "main", "busy"): 3, ("main", "busy"): 1}
    assert profile.period == int(1e9 / 49) and [names[t.type] for t in profile.sample_type] == ["samples", "cpu"]


def test_flame_graph_and_text_outputs() -> None:
    folded = Counter({"busy;main;leaf_hot": 3, "busy;main;<b>": 1})
    svg = flame_graph_svg(folded, title="t")
    assert svg.startswith("<svg") and "leaf_hot (3 samples, 75.00%)" in svg and "&lt;b&gt;" in svg
    assert folded_text(folded) == "busy;main;<b> 1\nbusy;main;leaf_hot 3\n"


def test_a_cut_off_text_leaves_out_its_last_sample_rather_than_root_it_wrongly() -> None:
    folder = StackFolder()
    for line in PERF_SCRIPT.splitlines()[:7]:  # the second sample loses its outer frame
        folder.feed(line)
    assert folder.finish(cut=True) == Counter({"busy;__libc_start_call_main;[busy];leaf_hot": 1})
