"""Ray Train's entry point, free of heavy imports.

Ray Train's controller actor unpickles the training function only to hand it to the workers; by
reference to `pipeline.engine.ray_context` it would import torchvision, the models and the loop for
nothing (a smoke fit on 2 cores: 22.7 s -> 19 s without them). The workers import the loop when
they call it.
"""
from __future__ import annotations


def train_loop_per_worker(loop_config: dict):
    from pipeline.engine.ray_context import train_loop_per_worker as loop

    return loop(loop_config)
