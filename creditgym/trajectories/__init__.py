"""Trajectory records (JSONL, one episode a line) and offline re-scoring with another potential or estimator.

A record keeps, for each step, the observation (text or array), the action, the reward components, the info and,
when the env declares one, its `state()`, so potentials can be recomputed offline. LLM policies can add the
prompt and response token ids and logprobs. Each line also holds the env id, the reset seed and the creditgym
version.

    episodes = record_episodes(env, policy, n=8, seed=0, path="runs/traj.jsonl")
    episodes = [add_shaping(e, get_potential("box_distance").offline, gamma=0.99) for e in episodes]

A path ending in .gz holds gzip-compressed JSONL, for writing, reading, trimming and re-scoring alike. Runs record
to one (`RUN_TRAJECTORIES`): PPO's Sokoban records shrink 49 times so, from 1.1 KB to 23 bytes a step.

Values are stored as JSON, with two departures from strict JSON (RFC 8259) that Python's `json` reads back:
NaN and ±infinity (a reward, say) are written as the bare tokens `NaN`, `Infinity` and `-Infinity`, which jq
and JavaScript's JSON.parse refuse. A numpy array (or tensor) of booleans, integers or floats is an object
`{"encoding": "base64", "__ndarray__": base64 of its bytes, little-endian in C order, "dtype": "float32",
"shape": [...]}` (in NumPy: `np.frombuffer(base64.b64decode(data), np.dtype(dtype).newbyteorder("<"))
.reshape(shape)`); a string or object array is `{"__ndarray__": nested lists, "dtype": ..., "shape": [...]}`.
Records of format /1 (`READABLE_FORMATS`), which held every array as nested lists, still read, also without
"shape" (records written before it was stored): files may mix both. Format /2 reads 4x as fast and writes 2-3x
as fast (docs/benchmarks.md).

The modules: `records` (the format), `files` (writing, reading, trimming), `recording` (building records from envs
and trainers), `rescore` (offline re-scoring). Their settings, such as `files.GZIP_LEVEL`, are read where they are
defined: set them on the module, not on this package, which only re-exports them.

The LLM trainer's rollouts become records with `llm_episode_records` (`LLMTrainConfig.record_trajectories`
writes them to the run folder's trajectories.jsonl.gz). PPO records the episodes of its first
`PPOConfig.record_envs` envs with `VectorRecorder`, which builds records from the batched tensors of a vector env.
"""

from __future__ import annotations

from .files import (
    GZIP_LEVEL,
    GZIP_MEMBER_BYTES,
    LEGACY_RUN_TRAJECTORIES,
    RUN_TRAJECTORIES,
    TrajectoryWriter,
    check_output_path,
    is_gzipped,
    load_trajectories,
    read_trajectories,
    remove_run_trajectories,
    replacing_writer,
    run_trajectories,
    trim_trajectories,
)
from .recording import (
    Policy,
    PolicyOutput,
    VectorRecorder,
    llm_episode_record,
    llm_episode_records,
    reached_observations,
    record_episodes,
    sokoban_states,
)
from .records import (
    FORMAT,
    MAX_TEXT_ARRAY_BYTES,
    READABLE_FORMATS,
    Episode,
    Step,
    TrajectoryFormatError,
    TrajectoryWarning,
)
from .rescore import (
    ESTIMATORS,
    RecordSummary,
    add_shaping,
    offline_potential,
    offline_potential_names,
    rescore_file,
    step_advantages,
    summarize,
    with_advantages,
)

__all__ = [
    "ESTIMATORS", "FORMAT", "GZIP_LEVEL", "GZIP_MEMBER_BYTES", "LEGACY_RUN_TRAJECTORIES", "MAX_TEXT_ARRAY_BYTES",
    "READABLE_FORMATS", "RUN_TRAJECTORIES", "Episode", "Policy", "PolicyOutput", "RecordSummary", "Step",
    "TrajectoryFormatError", "TrajectoryWarning", "TrajectoryWriter", "VectorRecorder", "add_shaping",
    "check_output_path", "is_gzipped", "llm_episode_record", "llm_episode_records", "load_trajectories",
    "offline_potential", "offline_potential_names", "reached_observations", "read_trajectories", "record_episodes",
    "remove_run_trajectories", "replacing_writer", "rescore_file", "run_trajectories", "sokoban_states",
    "step_advantages", "summarize", "trim_trajectories", "with_advantages",
]
