"""Simulation: the native MuJoCo tabletop suite, the robosuite wrapper, scripted
experts, data generation and evaluation.

Importing ``sim`` registers every environment id with Gymnasium (cheaply: robosuite
itself is imported only when one of its environments is made).

    import gymnasium as gym, sim
    env = sim.make("vptr/Lift-v0", image_size=64)
    expert = sim.make_expert(env, noise=0.0, seed=0)
"""

from sim.registry import ENV_IDS, make, make_expert, register_all

register_all()

__all__ = ["ENV_IDS", "make", "make_expert", "register_all"]
