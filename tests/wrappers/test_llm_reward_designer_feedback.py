"""RewardDesigner's human feedback (Text2Reward): it reaches every later prompt, is recorded in report.json, is
never asked after the last iteration, replays from a file, and a failing source keeps the run's records.

The models are the other designer tests' doubles: `IterationChat` (HAND-WRITTEN programs per design call) with
stubbed training (`stub_training`: a program's success rate is the number in its comment), and the CLI tests'
`ProseChat` behind their `design` fixture (no program reaches training).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

import creditgym  # noqa: F401  (registers the envs)
from creditgym.wrappers.llm_reward.designer import RewardDesigner
from creditgym.wrappers.llm_reward.feedback import HUMAN_FEEDBACK_MAX_CHARS, HumanFeedbackError, IterationSummary
from tests.wrappers.test_llm_reward_designer import config
from tests.wrappers.test_llm_reward_designer_cli import design  # noqa: F401  (see `cli`)
from tests.wrappers.test_llm_reward_designer_robustness import IterationChat, scored, stub_training  # noqa: F401

HEADING = "Feedback from the user"
CORNERS = "The agent pushes boxes into corners; penalise that."
LAST_BOX = "Now it stalls with one box left: reward the last box more."


def user_prompt(batch: list[list[dict]]) -> str:
    return batch[0][1]["content"]


def recording(answers: dict[int, Any]) -> tuple[list[tuple[int, IterationSummary]], Any]:
    """A feedback callback that answers `answers[iteration]` (an exception is raised) and keeps its calls."""
    calls: list[tuple[int, IterationSummary]] = []

    def ask(iteration: int, summary: IterationSummary) -> str | None:
        calls.append((iteration, summary))
        answer = answers.get(iteration)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return calls, ask


@pytest.mark.usefixtures("stub_training")
def test_feedback_reaches_every_later_prompt_and_is_recorded(tmp_path: Path) -> None:
    chat = IterationChat([[scored(0.3), scored(0.1)], [scored(0.2), scored(0.6)], [scored(0.4), scored(0.5)],
                          [scored(0.1), scored(0.1)]])
    calls, ask = recording({0: f"  {CORNERS}\n", 1: "   ", 2: LAST_BOX})
    result = RewardDesigner(chat, config(tmp_path, iterations=4, samples=2, critic=False), human_feedback=ask).run()
    prompts = [user_prompt(batch) for batch in chat.design_calls]
    assert HEADING not in prompts[0]
    # carried forward, oldest first, after the designer's own feedback: the user's word comes last
    assert prompts[1].index("best program so far") < prompts[1].index(HEADING)
    assert f"After iteration 1: {CORNERS}" in prompts[1] and "After iteration 2" not in prompts[1]
    assert f"After iteration 1: {CORNERS}" in prompts[2] and "After iteration 2" not in prompts[2]  # blank: none
    assert prompts[3].index(f"After iteration 1: {CORNERS}") < prompts[3].index(f"After iteration 3: {LAST_BOX}")
    assert prompts[3].count(HEADING) == 1 and "```" not in prompts[3][prompts[3].index(HEADING):]  # not fenced
    # never asked after the last iteration
    assert [iteration for iteration, _ in calls] == [0, 1, 2]
    # the summary shows the best program so far, of any iteration
    summary = calls[1][1]
    assert (summary.best_id, summary.fitness, summary.iteration, summary.iterations) == ("it1-s1", 0.6, 1, 4)
    assert summary.source == result.candidates[3].source and summary.stage_counts["train"] == 2
    assert summary.ppo_runs == ["ppo/it1-s1"] and summary.run_dir == result.run_dir
    text = summary.text()
    assert "Iteration 2 of 4 finished" in text and "it1-s1, fitness 0.600" in text and "# 0.6" in text
    assert "Reward reflection" in text and "learning_curve.png" in text
    # recorded, stripped, blank as null, one entry per iteration but the last
    assert result.human_feedback == [CORNERS, None, LAST_BOX]
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["human_feedback"] == [CORNERS, None, LAST_BOX]
    stored = json.loads((result.run_dir / "candidates" / "it3-s0.json").read_text())
    assert LAST_BOX in stored["prompt"][1]["content"]


@pytest.mark.usefixtures("stub_training")
def test_without_a_source_nothing_is_added_and_null_is_recorded(tmp_path: Path) -> None:
    chat = IterationChat([[scored(0.3)], [scored(0.2)], [scored(0.1)]])
    result = RewardDesigner(chat, config(tmp_path, iterations=3, samples=1, critic=False)).run()
    assert all(HEADING not in user_prompt(batch) for batch in chat.design_calls)
    assert json.loads((result.run_dir / "report.json").read_text())["human_feedback"] == [None, None]


@pytest.mark.usefixtures("stub_training")
def test_a_written_list_is_the_callback_replayed(tmp_path: Path) -> None:
    replies = [[scored(0.3)], [scored(0.2)], [scored(0.1)]]
    asked, replayed = IterationChat(replies), IterationChat(replies)
    _, ask = recording({0: CORNERS, 1: LAST_BOX})
    first = RewardDesigner(asked, config(tmp_path, iterations=3, samples=1, critic=False, run_name="asked"),
                           human_feedback=ask).run()
    recorded = json.loads((first.run_dir / "report.json").read_text())["human_feedback"]
    RewardDesigner(replayed, config(tmp_path, iterations=3, samples=1, critic=False, run_name="replayed"),
                   human_feedback=recorded).run()
    assert asked.design_calls == replayed.design_calls and LAST_BOX in user_prompt(replayed.design_calls[2])


@pytest.mark.usefixtures("stub_training")
@pytest.mark.parametrize(("answer", "expected"), [
    (RuntimeError("terminal gone"), "RuntimeError: terminal gone"),
    ("x" * (HUMAN_FEEDBACK_MAX_CHARS + 1), f"the limit is HUMAN_FEEDBACK_MAX_CHARS = {HUMAN_FEEDBACK_MAX_CHARS:,}"),
    (42, "must be text or None"),
])
def test_a_failing_source_stops_the_run_and_keeps_the_report(tmp_path: Path, answer: Any, expected: str) -> None:
    chat = IterationChat([[scored(0.3), scored(0.1)], [scored(0.2), scored(0.6)], [scored(0.4), scored(0.5)]])
    _, ask = recording({0: CORNERS, 1: answer})
    designer = RewardDesigner(chat, config(tmp_path, iterations=3, samples=2, critic=False), human_feedback=ask)
    with pytest.raises(HumanFeedbackError, match="after iteration 2 of 3") as raised:
        designer.run()
    assert expected in str(raised.value) and "keep its 4 candidates" in str(raised.value)
    assert len(chat.design_calls) == 2  # stopped: no third iteration
    report = json.loads((designer.run_dir / "report.json").read_text())
    assert report["stage_counts"]["generated"] == 4 and report["best"]["id"] == "it1-s1"
    assert report["human_feedback"] == [CORNERS] and expected in report["warnings"][-1]
    assert sorted(p.stem for p in (designer.run_dir / "candidates").glob("*.json")) == [
        "it0-s0", "it0-s1", "it1-s0", "it1-s1"]


@pytest.mark.usefixtures("stub_training")
def test_the_report_is_current_while_the_user_is_asked_and_after_ctrl_c(tmp_path: Path) -> None:
    # The summary points the user at report.json: it did not exist at the first question, and a Ctrl-C at the
    # second left out the iteration just finished (and its better program).
    chat = IterationChat([[scored(0.3)], [scored(0.6)], [scored(0.1)]])
    seen = []

    def ask(iteration: int, summary: IterationSummary) -> str | None:
        seen.append(json.loads((summary.run_dir / "report.json").read_text())["stage_counts"]["generated"])
        if iteration == 1:
            raise KeyboardInterrupt
        return CORNERS

    designer = RewardDesigner(chat, config(tmp_path, iterations=3, samples=1, critic=False), human_feedback=ask)
    with pytest.raises(KeyboardInterrupt):
        designer.run()
    assert seen == [1, 2]
    report = json.loads((designer.run_dir / "report.json").read_text())
    assert report["best"]["id"] == "it1-s0" and report["human_feedback"] == [CORNERS]


@pytest.mark.parametrize(("entries", "expected"), [
    ("penalise corners", "not a single string|a callable or a list"),
    ([CORNERS, None, LAST_BOX], "holds 3 entries, but a run of 3 iterations takes feedback after the first 2"),
    ([None, 7], "entry 2 of human_feedback \\(given after iteration 2\\) must be text or None"),
    (["x" * (HUMAN_FEEDBACK_MAX_CHARS + 1)], "HUMAN_FEEDBACK_MAX_CHARS"),
])
def test_a_bad_written_list_is_refused_before_any_model_call(tmp_path: Path, entries: Any, expected: str) -> None:
    chat = IterationChat([])
    with pytest.raises(ValueError, match=expected):
        RewardDesigner(chat, config(tmp_path, iterations=3), human_feedback=entries)
    assert chat.design_calls == []


# --- the command line -------------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    """stdin as a terminal that a person types `text` into; counts the lines read (EOF when `text` runs out)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.reads = 0

    def isatty(self) -> bool:
        return True

    def readline(self, *args: Any) -> str:
        self.reads += 1
        return super().readline(*args)


def prompts_of(run_dir: Path) -> dict[str, list[dict]]:
    return {path.stem: json.loads(path.read_text())["prompt"] for path in sorted(run_dir.glob("candidates/*.json"))}


@pytest.fixture
def cli(request: pytest.FixtureRequest) -> Any:
    """The CLI tests' `design` fixture: runs `creditgym design-reward` on `ProseChat` with tiny budgets."""
    return request.getfixturevalue("design")


@pytest.fixture
def no_model(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the model fails the test: refusals must come before it (set after `cli` set its stand-in)."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail("the model was loaded")

    monkeypatch.setattr("creditgym.llm.HFChatModel.from_pretrained", refuse)


def test_cli_asks_on_the_terminal_and_a_feedback_file_replays_it(cli, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # too long (asked again), the feedback, an empty line (none), then Ctrl-D: never asked again
    terminal = Terminal(f"{'x' * (HUMAN_FEEDBACK_MAX_CHARS + 1)}\n{CORNERS}\n\n")
    monkeypatch.setattr("sys.stdin", terminal)
    code, out = cli("--iterations", "5", "--human-feedback")
    assert code == 0, out
    assert terminal.reads == 4  # the fourth read meets end of input; after iteration 4 nothing is read
    assert "Iteration 1 of 5 finished" in out and "No program has passed every stage yet" in out
    assert "type it again" in out and "no more feedback this run" in out and "Iteration 4 of 5" not in out
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["human_feedback"] == [CORNERS, None, None, None]
    asked = prompts_of(tmp_path / "cli")
    assert HEADING not in asked["it0-s0"][1]["content"] and f"After iteration 1: {CORNERS}" in asked["it4-s1"][1][
        "content"]

    monkeypatch.setattr("sys.stdin", io.StringIO())  # a file replays without a terminal
    written = tmp_path / "feedback.json"
    written.write_text(json.dumps(report["human_feedback"]))
    for name, path in (("from-list", written), ("from-report", tmp_path / "cli" / "report.json")):
        code, out = cli("--iterations", "5", "--feedback-file", str(path), "--run-name", name)
        assert code == 0, out
        assert prompts_of(tmp_path / name) == asked  # the same seed and model: the same prompts
        assert json.loads((tmp_path / name / "report.json").read_text())["human_feedback"] == report["human_feedback"]


@pytest.mark.parametrize(("content", "expected"), [
    ("penalise corners", "is not JSON (Expecting value, line 1 column 1); write a JSON list of strings"),
    ('{"after": "corners"}', "must be a list of feedback texts"),
    ('["corners", 3]', "entry 2 of the feedback file"),
    ('["a", "b", "c"]', "holds 3 entries, but a run of 3 iterations takes feedback after the first 2"),
    (json.dumps(["x" * (HUMAN_FEEDBACK_MAX_CHARS + 1)]), "the limit is HUMAN_FEEDBACK_MAX_CHARS"),
    (None, "cannot read the feedback file"),
])
def test_cli_refuses_a_malformed_feedback_file_before_loading_the_model(cli, no_model, tmp_path: Path,
                                                                        content: str | None, expected: str) -> None:
    path = tmp_path / "feedback.json"
    if content is not None:
        path.write_text(content)
    code, out = cli("--iterations", "3", "--feedback-file", str(path))
    assert code == 2 and expected in " ".join(out.split()), out
    assert not (tmp_path / "cli").exists()


def test_cli_human_feedback_refuses_a_stdin_that_is_not_a_terminal(cli, no_model, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("feedback through a pipe\n"))
    code, out = cli("--iterations", "3", "--human-feedback")
    assert code == 2 and "stdin is not a terminal" in out and "--feedback-file" in " ".join(out.split())
    assert not (tmp_path / "cli").exists()


def test_cli_feedback_flags_exclude_each_other(cli, no_model, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "feedback.json"
    path.write_text("[]")
    with pytest.raises(SystemExit) as raised:
        cli("--human-feedback", "--feedback-file", str(path))
    assert raised.value.code == 2
    assert "not allowed with argument --human-feedback" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_the_user_watches_the_best_programs_policy(tmp_path: Path) -> None:
    """Text2Reward's user watches rollouts: the summary holds GIFs of the best program's trained policy playing
    held-out levels, drawn once per program."""
    from PIL import Image

    from creditgym.wrappers.llm_reward.feedback import WATCHED_EPISODES

    chat = IterationChat([[scored(0.5)], [scored(0.5)], [scored(0.5)]])
    calls, ask = recording({})
    RewardDesigner(chat, config(tmp_path, iterations=3, samples=1, critic=False), human_feedback=ask).run()
    summary = calls[0][1]
    assert summary.watch_error is None and len(summary.watch) == WATCHED_EPISODES
    for gif in summary.watch:
        assert gif.endswith(".gif") and Path(gif).parent == summary.run_dir / "watch" / summary.best_id
        with Image.open(gif) as image:
            assert image.n_frames >= 2  # the reset board and at least one move
    assert f"Watch its policy on {WATCHED_EPISODES} held-out levels" in summary.text()
    if calls[1][1].best_id == summary.best_id:  # the same best program is not played again
        assert calls[1][1].watch == summary.watch


@pytest.mark.usefixtures("stub_training")
def test_a_policy_that_cannot_be_played_is_said_so(tmp_path: Path) -> None:
    calls, ask = recording({})
    RewardDesigner(IterationChat([[scored(0.3)], [scored(0.2)]]),
                   config(tmp_path, iterations=2, samples=1, critic=False), human_feedback=ask).run()
    summary = calls[0][1]
    assert summary.watch == [] and "FileNotFoundError" in summary.watch_error  # the stub trained no policy
    assert "Its policy could not be played" in summary.text()


@pytest.mark.usefixtures("stub_training")
def test_each_best_program_is_played_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import creditgym.wrappers.llm_reward.designer as designer_module

    played: list[tuple[str, Path]] = []

    def watch(ppo_run: str, out_dir: Path) -> tuple[list[str], None]:
        played.append((ppo_run, out_dir))
        return [str(out_dir / "episode-00000.gif")], None

    monkeypatch.setattr(designer_module, "watch_policy", watch)
    chat = IterationChat([[scored(0.6)], [scored(0.2)], [scored(0.7)], [scored(0.1)]])
    calls, ask = recording({})
    RewardDesigner(chat, config(tmp_path, iterations=4, samples=1, critic=False), human_feedback=ask).run()
    assert [summary.best_id for _, summary in calls] == ["it0-s0", "it0-s0", "it2-s0"]
    assert played == [("ppo/it0-s0", tmp_path / "design" / "watch" / "it0-s0"),
                      ("ppo/it2-s0", tmp_path / "design" / "watch" / "it2-s0")]  # the last fitness run's policy
    assert calls[1][1].watch == [str(tmp_path / "design" / "watch" / "it0-s0" / "episode-00000.gif")]


def test_watching_plays_greedily_on_held_out_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import creditgym.agents.evaluate as evaluate_module
    from creditgym.wrappers.llm_reward.feedback import WATCHED_EPISODES, watch_policy

    asked: list[dict] = []

    def evaluate(run_dir, **kwargs):
        asked.append(kwargs)
        raise KeyError("stop here")  # and any error is reported, never raised

    monkeypatch.setattr(evaluate_module, "evaluate", evaluate)
    assert watch_policy("ppo/x", tmp_path / "w") == ([], "KeyError: 'stop here'")
    assert asked == [{"episodes": WATCHED_EPISODES, "record": tmp_path / "w" / "episodes.jsonl"}]  # greedy, test split


def test_overwrite_clears_an_earlier_runs_watch_folder(tmp_path: Path) -> None:
    calls, ask = recording({})
    first = RewardDesigner(IterationChat([[scored(0.5)], [scored(0.5)]]),
                           config(tmp_path, iterations=2, samples=1, critic=False), human_feedback=ask).run()
    assert (first.run_dir / "watch" / "it0-s0").is_dir()
    RewardDesigner(IterationChat([[scored(0.5)], [scored(0.5)]]),
                   config(tmp_path, iterations=2, samples=1, critic=False, overwrite=True)).run()
    assert not (first.run_dir / "watch").exists()  # no source of feedback this time: nothing watched, nothing stale
