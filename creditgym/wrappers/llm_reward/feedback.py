"""Human feedback for the reward designer (Text2Reward): what the user is shown after an iteration
(`IterationSummary`), the forms feedback takes (a callback, or a list written beforehand, as report.json records it),
and the checks every piece passes before it reaches a prompt. `RewardDesigner(human_feedback=...)` uses them."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: held-out levels the best program's policy plays for the user to watch after each iteration
WATCHED_EPISODES = 4

#: longest piece of human feedback, in characters: a sentence or two steers the designer, while a pasted log would
#: crowd the task out of every later prompt (feedback is carried forward)
HUMAN_FEEDBACK_MAX_CHARS = 1000


@dataclass
class IterationSummary:
    """What the user is shown after an iteration to judge how the best program so far trains (the one the next
    prompt asks the model to improve). `iteration` counts from 0, as candidate ids do; `text()` and rich (as
    `console.print(summary)`) render it."""

    iteration: int
    iterations: int
    """the run's number of iterations"""
    stage_counts: dict[str, int]
    """how many of this iteration's candidates passed each stage"""
    best_id: str | None
    """the best program so far, of any iteration (None: no program has passed every stage yet)"""
    fitness: float | None
    """its success rate in the last part of training, on the selection seeds"""
    source: str | None
    reflection: str
    """its reward reflection: per-component statistics over its training transitions"""
    analysis: str
    """its trajectory analysis: how its training episodes ended"""
    ppo_runs: list[str]
    """its fitness PPO run folders, each with learning_curve.png and metrics.jsonl"""
    run_dir: Path
    """the design run folder: candidates/<id>.json holds every program with its errors, report.json the counts"""
    watch: list[str] = field(default_factory=list)
    """GIFs (and transcripts) of its last fitness run's policy playing held-out levels greedily (`watch_policy`)"""
    watch_error: str | None = None
    """why its policy could not be played, where it could not"""

    def _parts(self) -> list[tuple[str, str]]:
        """(heading, body) pairs: first the title with the stage counts; the heading "python" marks the program."""
        counts = ", ".join(f"{stage} {count}" for stage, count in self.stage_counts.items() if stage != "generated")
        parts = [(f"Iteration {self.iteration + 1} of {self.iterations} finished",
                  f"{self.stage_counts.get('generated', 0)} programs; passed: {counts}")]
        if self.best_id is None:
            parts.append(("No program has passed every stage yet", f"the errors are in {self.run_dir / 'candidates'}"))
        else:
            parts += [(f"Best program so far: {self.best_id}, fitness {self.fitness:.3f} (success rate in the last "
                       "part of training)", ""), ("python", self.source or ""),
                      ("Reward reflection", self.reflection), ("Trajectory analysis", self.analysis),
                      ("Its training runs (learning_curve.png, metrics.jsonl)", "\n".join(self.ppo_runs))]
            if self.watch:
                parts.append((f"Watch its policy on {len(self.watch)} held-out levels (greedy)", "\n".join(self.watch)))
            elif self.watch_error:
                parts.append(("Its policy could not be played", self.watch_error))
        parts.append(("Every program and report.json", str(self.run_dir)))
        return parts

    def text(self) -> str:
        lines = []
        for heading, body in self._parts():
            if heading == "python":
                lines.append(body)
            else:
                lines += [f"{heading}:", body] if body else [heading]
        return "\n".join(lines)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.rule import Rule
        from rich.syntax import Syntax
        from rich.text import Text

        (title, counts), *rest = self._parts()
        items: list[Any] = [Rule(title), Text(counts)]
        for heading, body in rest:  # Text, not markup: reflections and errors hold the program's own strings
            if heading == "python":
                items.append(Syntax(body, "python"))
            else:
                items += [Text(heading, style="bold"), *([Text(body)] if body else [])]
        return Group(*items)


#: `fn(iteration, summary) -> feedback or None`, called after every iteration but the last; or the feedback written
#: beforehand, entry i given after iteration i (as report.json records it)
HumanFeedback = Callable[[int, IterationSummary], str | None] | Sequence[str | None]


class HumanFeedbackError(RuntimeError):
    """The human-feedback source raised, or gave something other than text within `HUMAN_FEEDBACK_MAX_CHARS`; the
    run stopped after the iteration it was asked about, with report.json and the candidate records kept."""


def checked_feedback(text: Any, where: str) -> str | None:
    """One piece of feedback as the prompt carries it: stripped, None when empty; anything but text within the
    limit is refused with a ValueError that says where it came from."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"the feedback {where} must be text or None (null), got {type(text).__name__}")
    text = text.strip()
    if len(text) > HUMAN_FEEDBACK_MAX_CHARS:
        raise ValueError(f"the feedback {where} is {len(text):,} characters; the limit is HUMAN_FEEDBACK_MAX_CHARS = "
                         f"{HUMAN_FEEDBACK_MAX_CHARS:,}: shorten it to a sentence or two")
    return text or None


def check_feedback_entries(entries: Any, iterations: int, *, source: str = "human_feedback") -> list[str | None]:
    """Feedback written beforehand, checked before any model call: a list whose entry i is given after iteration i
    (text; None or "" for none). It may be shorter than `iterations - 1` (the rest get none), not longer."""
    if not isinstance(entries, list | tuple):
        raise ValueError(f"{source} must be a list of feedback texts, the first given after the first iteration "
                         f"(null or \"\" for none), e.g. [\"penalise pushing boxes into corners\", null]; got "
                         f"{type(entries).__name__}")
    if len(entries) > iterations - 1:
        raise ValueError(f"{source} holds {len(entries)} entries, but a run of {iterations} iterations takes feedback "
                         f"after the first {iterations - 1} only (none after the last); remove the extra entries or "
                         "raise iterations (--iterations)")
    return [checked_feedback(text, f"entry {i + 1} of {source} (given after iteration {i + 1})")
            for i, text in enumerate(entries)]


def read_feedback_file(path: str | Path, iterations: int) -> list[str | None]:
    """Feedback written beforehand, from a JSON file: a list whose first entry is given after the first iteration,
    the second after the second... (a string; null or "" for none), e.g. ["penalise pushing boxes into corners",
    null, "reward the last box more"];
    or a design run's report.json, whose recorded "human_feedback" it replays. Refused with a ValueError that
    says what to change when it is anything else."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the feedback file {path}: {error}") from error
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the feedback file {path} is not JSON ({error.msg}, line {error.lineno} column "
                         f"{error.colno}); write a JSON list of strings, the first given after the first iteration, "
                         "e.g. [\"penalise pushing boxes into corners\", null]") from None
    if isinstance(entries, dict) and "human_feedback" in entries:  # a design run's report.json
        entries = entries["human_feedback"]
    return check_feedback_entries(entries, iterations, source=f"the feedback file {path}")


def watch_policy(ppo_run: str | Path, out_dir: str | Path, *, episodes: int = WATCHED_EPISODES
                 ) -> tuple[list[str], str | None]:
    """Plays the final policy of the PPO run `ppo_run` greedily on the first `episodes` held-out levels, records
    them to `out_dir/episodes.jsonl` and draws each (`creditgym.render`): what Text2Reward's user watches before
    giving feedback. Returns the GIF paths (a transcript's where nothing can be drawn), or no paths and why."""
    from creditgym.agents.evaluate import evaluate
    from creditgym.render import render_file

    out_dir = Path(out_dir)
    record = out_dir / "episodes.jsonl"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        evaluate(ppo_run, episodes=episodes, record=record)
        rendered = render_file(record, out_dir, episodes=episodes)
    except Exception as error:  # a missing checkpoint, an unreadable run: watching must never stop a design run
        return [], f"{type(error).__name__}: {error}"
    return [str(item.animation or item.transcript) for item in rendered], None
