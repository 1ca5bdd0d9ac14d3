"""The Hydra application that executes leaderboard runs: ``python -m clzoo.leaderboard.job --multirun
plan=PLAN.json job=range(0,N) hydra/launcher=joblib hydra.launcher.n_jobs=2``.

``clzoo-leaderboard run`` writes the plan (one entry per run: configuration, run folder, threads) and starts
this multirun; job ``k`` executes entry ``k``. Any Hydra launcher plugin can run the jobs (joblib, submitit
for Slurm, ray): ``clzoo-leaderboard run SUITE --launcher submitit_slurm --hydra hydra.launcher.partition=...``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig


@dataclass
class JobConfig:
    plan: str = "???"  # the plan file written by clzoo-leaderboard run
    job: int = 0       # which entry of the plan


ConfigStore.instance().store(name="leaderboard_job", node=JobConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="leaderboard_job")
def main(cfg: DictConfig) -> str:
    from .runs import execute

    with open(cfg.plan) as fh:
        entry = json.load(fh)["jobs"][int(cfg.job)]
    return execute(entry)["status"]


if __name__ == "__main__":
    main()
