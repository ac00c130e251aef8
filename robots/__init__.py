"""Hardware abstraction layer: Robot protocol (LeRobot-compatible), drivers, safety
filter, chunk executor and real-time control loop.

Depends only on torch, safetensors and numpy at run time -- never on training code.
"""
