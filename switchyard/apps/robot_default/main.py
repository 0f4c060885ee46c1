"""Default robot project: a simulated robot driven through ``sport_client``.

See README.txt next to this file for the calls. Everything here is plain Python and
threads, like a real project would be; the framework injects ``push_message``.
"""

import random
import threading
import time

push_message = None  # injected by the switchyard robot worker

OBJECTS = ["球", "人", "椅子", "门", "杯子"]
MAX_SPEED = 1.0


class SportClient:
    """A simulated robot: posture, velocity, odometry, battery and a recognition loop."""

    def __init__(self):
        self._lock = threading.Lock()
        self.posture = "sitting"
        self.velocity = {"vx": 0.0, "vy": 0.0, "vyaw": 0.0}
        self.position = {"x": 0.0, "y": 0.0, "yaw": 0.0}
        self.battery = 100.0
        self._recognition_stop = threading.Event()
        self._recognition_thread = None
        self.recognition_count = 0

    def StandUp(self):
        with self._lock:
            self.posture = "standing"
        return {"posture": self.posture}

    def SitDown(self):
        with self._lock:
            self.velocity = {"vx": 0.0, "vy": 0.0, "vyaw": 0.0}
            self.posture = "sitting"
        return {"posture": self.posture}

    def Move(self, vx=0.0, vy=0.0, vyaw=0.0, duration=1.0):
        for name, value in (("vx", vx), ("vy", vy), ("vyaw", vyaw)):
            if not isinstance(value, (int, float)) or abs(value) > MAX_SPEED:
                raise ValueError(f"{name} must be a number within [-{MAX_SPEED}, {MAX_SPEED}], got {value!r}")
        if not isinstance(duration, (int, float)) or not 0 <= duration <= 10:
            raise ValueError(f"duration must be within [0, 10] seconds, got {duration!r}")
        with self._lock:
            if self.posture != "standing":
                raise RuntimeError("the robot must be standing to move (call StandUp first)")
            self.velocity = {"vx": float(vx), "vy": float(vy), "vyaw": float(vyaw)}
            self.position["x"] += vx * duration
            self.position["y"] += vy * duration
            self.position["yaw"] += vyaw * duration
            self.battery = max(0.0, self.battery - 0.1 * duration)
            return {"position": dict(self.position), "velocity": dict(self.velocity)}

    def StopMove(self):
        with self._lock:
            self.velocity = {"vx": 0.0, "vy": 0.0, "vyaw": 0.0}
        return {"velocity": dict(self.velocity)}

    def get_status(self):
        with self._lock:
            return {
                "posture": self.posture,
                "position": dict(self.position),
                "velocity": dict(self.velocity),
                "battery": round(self.battery, 1),
                "recognition_running": self._recognition_thread is not None,
                "recognition_count": self.recognition_count,
            }

    def start_recognition(self, interval=1.0):
        if not isinstance(interval, (int, float)) or not 0.01 <= interval <= 60:
            raise ValueError(f"interval must be within [0.01, 60] seconds, got {interval!r}")
        if self._recognition_thread is not None:
            return {"recognition_running": True, "message": "already running"}
        self._recognition_stop.clear()
        self._recognition_thread = threading.Thread(
            target=self._recognize, args=(interval,), name="recognition", daemon=True
        )
        self._recognition_thread.start()
        return {"recognition_running": True}

    def stop_recognition(self):
        thread, self._recognition_thread = self._recognition_thread, None
        if thread is not None:
            self._recognition_stop.set()
            thread.join(timeout=2)
        return {"recognition_running": False, "recognition_count": self.recognition_count}

    def stop(self):
        """Called by the framework when the client disconnects."""
        self.stop_recognition()
        self.StopMove()

    def _recognize(self, interval):
        rng = random.Random()
        while not self._recognition_stop.wait(interval):
            self.recognition_count += 1
            result = {
                "count": self.recognition_count,
                "object": rng.choice(OBJECTS),
                "confidence": round(rng.uniform(0.6, 0.99), 2),
                "timestamp": time.time(),
            }
            if push_message is not None:
                push_message("recognition_result", result)


sport_client = SportClient()
