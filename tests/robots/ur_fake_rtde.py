"""A fake UR controller with the interfaces of ur_rtde's rtde_control / rtde_receive
(the methods robots.ur uses, same names and argument order), recording every call."""

import threading
import time


class FakeUR:
    def __init__(self, q=(0.0, -1.57, 1.57, -1.57, -1.57, 0.0)):
        self.q = list(q)
        self.tcp = [0.3, 0.0, 0.4, 0.0, 3.14, 0.0]
        self.servo: list[tuple[str, list[float], float, float, float, float, float]] = []
        self.watchdog_hz = None
        self.kicks = 0
        self.servo_stops = 0
        self.script_stopped = False
        self.connected = True
        self.protective = False
        self.estop = False
        self.fail_after = None  # servoJ raises after this many calls
        self.lock = threading.Lock()

    def interfaces(self):
        fake = self

        class RTDEControlInterface:
            def __init__(self, hostname, frequency=-1.0):
                self.hostname, self.dt = hostname, 1.0 / frequency

            def isConnected(self):
                return fake.connected

            def setWatchdog(self, min_frequency=10.0):
                fake.watchdog_hz = min_frequency
                return True

            def kickWatchdog(self):
                fake.kicks += 1
                return True

            def initPeriod(self):
                return time.perf_counter()

            def waitPeriod(self, t_cycle_start):
                rest = t_cycle_start + self.dt - time.perf_counter()
                if rest > 0:
                    time.sleep(rest)

            def _servo(self, kind, target, speed, acceleration, t, lookahead_time, gain):
                with fake.lock:
                    if fake.fail_after is not None and len(fake.servo) >= fake.fail_after:
                        raise RuntimeError("RTDE control script is not running")
                    fake.servo.append((kind, list(target), speed, acceleration, t, lookahead_time, gain))
                    if kind == "servoJ":
                        fake.q = list(target)
                    else:
                        fake.tcp = list(target)
                return True

            def servoJ(self, q, speed, acceleration, time, lookahead_time, gain):
                return self._servo("servoJ", q, speed, acceleration, time, lookahead_time, gain)

            def servoL(self, pose, speed, acceleration, time, lookahead_time, gain):
                return self._servo("servoL", pose, speed, acceleration, time, lookahead_time, gain)

            def servoStop(self, a=10.0):
                fake.servo_stops += 1
                return True

            def stopScript(self):
                fake.script_stopped = True

            def disconnect(self):
                fake.connected = False

        class RTDEReceiveInterface:
            def __init__(self, hostname, frequency=-1.0):
                self.hostname = hostname

            def getActualQ(self):
                return list(fake.q)

            def getActualQd(self):
                return [0.0] * 6

            def getActualTCPPose(self):
                return list(fake.tcp)

            def isProtectiveStopped(self):
                return fake.protective

            def isEmergencyStopped(self):
                return fake.estop

            def isConnected(self):
                return fake.connected

            def disconnect(self):
                pass

        return RTDEControlInterface, RTDEReceiveInterface
