"""Background writers that keep slow I/O out of the control loop.

* :class:`AsyncLog` -- JSON lines written by a thread; :meth:`AsyncLog.put` never blocks
  (a full queue drops the record and counts it).
* :class:`EpisodeRecorder` -- episodes to a LeRobotDataset v3.0 with LeRobot's own writer
  (as ``sim/generate.py`` does): the loop hands over each observation and the command
  actually sent; a thread builds the frames (``build_dataset_frame`` on features from
  ``hw_to_dataset_features``), adds them and saves episodes. Frames are never dropped
  (the queue is unbounded); :attr:`EpisodeRecorder.backlog` tells how far behind it is.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vptr.errors import ConfigError, DataError


class AsyncLog:
    """See the module docstring. ``path``: a JSON-lines file; or ``sink``: a callable
    that receives each record (in the writer thread)."""

    def __init__(self, path: str | Path | None = None, sink: Callable[[dict], None] | None = None,
                 maxsize: int = 10_000) -> None:
        if (path is None) == (sink is None):
            raise ConfigError("AsyncLog needs a path or a sink (one of them)")
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self._fh = open(path, "a") if path is not None else None  # closed in close()
        self._sink = sink
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._work, name="vptr-log", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        try:
            self._q.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        while True:
            batch = [self._q.get()]
            while True:  # drain what is there, write it in one go
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            records = [r for r in batch if r is not None]
            if self._fh is not None:
                self._fh.write("".join(json.dumps(r, default=_plain) + "\n" for r in records))
                self._fh.flush()
            else:
                for r in records:
                    self._sink(r)
            self.written += len(records)
            if done:
                return

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)  # blocking is fine here: the loop has ended
            self._thread.join()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _plain(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


class EpisodeRecorder:
    """See the module docstring. ``root`` must not exist yet (LeRobot creates it)."""

    def __init__(self, root: str | Path, observation_features: Mapping[str, Any],
                 action_features: Mapping[str, Any], fps: int, repo_id: str = "vptr/deploy",
                 robot_type: str = "", task: str = "", use_videos: bool = True,
                 video_codec: str = "h264") -> None:
        from lerobot.configs.video import RGBEncoderConfig
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        from lerobot.utils.feature_utils import hw_to_dataset_features

        root = Path(root)
        if root.exists():
            raise ConfigError(f"recording: {root} already exists (LeRobot writes a new dataset folder)")
        if int(fps) != fps or fps <= 0:
            raise ConfigError(f"recording: LeRobot datasets need an integer fps, got {fps}")
        self.features = {**hw_to_dataset_features(dict(observation_features), "observation", use_videos),
                         **hw_to_dataset_features(dict(action_features), "action", use_videos)}
        self.root, self.task = root, task
        self.dataset = LeRobotDataset.create(
            repo_id=repo_id, fps=int(fps), features=self.features, root=root, robot_type=robot_type,
            use_videos=use_videos, video_backend="pyav", rgb_encoder=RGBEncoderConfig(vcodec=video_codec))
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self.episodes = 0
        self.frames = 0
        self._thread = threading.Thread(target=self._work, name="vptr-recorder", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._q.qsize()

    def record(self, observation: Mapping[str, Any], action: Mapping[str, float]) -> None:
        """Queue one frame (copies the arrays; never blocks)."""
        obs = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in observation.items()}
        self._q.put(("frame", obs, dict(action)))

    def end_episode(self, save: bool = True) -> None:
        self._q.put(("end", save, None))

    def _work(self) -> None:
        from lerobot.utils.feature_utils import build_dataset_frame

        pending = 0
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is not None:
                continue
            kind, a, b = item
            try:
                if kind == "frame":
                    frame = {**build_dataset_frame(self.features, a, "observation"),
                             **build_dataset_frame(self.features, b, "action"), "task": self.task}
                    self.dataset.add_frame(frame)
                    pending += 1
                elif a and pending:
                    self.dataset.save_episode()
                    self.episodes += 1
                    self.frames += pending
                    pending = 0
                elif pending:
                    self.dataset.clear_episode_buffer()
                    pending = 0
            except BaseException as e:  # reported by close()
                self._error = e

    def close(self) -> None:
        """Wait for the writer, then finalize the dataset (outside the hot loop)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        self.dataset.finalize()
        if self._error is not None:
            raise DataError(f"recording to {self.root} failed: {self._error}") from self._error
