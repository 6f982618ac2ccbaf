"""Show that the random sequences catch each numbered bug of issue 12 when its fix is reverted (not a test:
it edits the working tree, runs the CI-size sequences, and puts every file back).

    python tests/check_reverted_fixes.py            # every revert, SR_SEQUENCE_OPS=200 (the CI size)
    python tests/check_reverted_fixes.py 4-fbc-mirror
"""

from __future__ import annotations

import os
import pathlib
import random
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
REVERTS = {
 "1-meta": [("sr_plugin/switch/api.py", "    _check_loaded(small_transformer)\n", ""),
            ("sr_plugin/switch/api.py", "    except BaseException:\n        rollback.run()\n        raise\n    return handle", "    except BaseException:\n        raise\n    return handle")],
 "1-hooked": [("sr_plugin/switch/api.py", '        existing.check_join("small", small_transformer)', '        pass'),
              ("sr_plugin/switch/api.py", "    except BaseException:\n        rollback.run()\n        raise\n    return handle", "    except BaseException:\n        raise\n    return handle"),
              ("sr_plugin/accel/__init__.py", "        owner = _accelerated_by(model)\n        if owner is not None and owner is not self:", "        owner = _accelerated_by(model)\n        if False:")],
 "2-shared": [("sr_plugin/accel/__init__.py", "        owner = _accelerated_by(model)\n        if owner is not None and owner is not self:", "        owner = _accelerated_by(model)\n        if False:"),
              ("sr_plugin/accel/__init__.py", "    except BaseException:\n        handle.remove()  # all or nothing", "    except BaseException:\n        pass  # all or nothing"),
              ("sr_plugin/accel/__init__.py", "        except BaseException:\n            self.detach(role)\n            raise", "        except BaseException:\n            raise")],
 "2-oneblock": [("sr_plugin/accel/__init__.py", "        if self.fbcache is not None and len(self.adapter.blocks(model)) < 2:", "        if False:"),
                ("sr_plugin/accel/__init__.py", "    except BaseException:\n        handle.remove()  # all or nothing", "    except BaseException:\n        pass  # all or nothing"),
                ("sr_plugin/accel/__init__.py", "        except BaseException:\n            self.detach(role)\n            raise", "        except BaseException:\n            raise")],
 "3-teacache-shared": [("sr_plugin/accel/teacache.py", "        if not sh.tracker.active:  # a call of another pipeline", "        if False:  # a call of another pipeline"),
                       ("sr_plugin/accel/teacache.py", "        if self.shared.tracker.active:\n            self.shared.captured", "        if True:\n            self.shared.captured")],
 "4-fbc-mirror": [("sr_plugin/integrations/user_cache_mirror.py", "        if self._enabled_fbc and (fbc is None or small._cache_config != fbc):", "        if False:"),
                  ("sr_plugin/switch/routing.py", "            self.mirror.end_call()\n", "")],
 "5-in-flight": [("sr_plugin/switch/routing.py", "        holder = vars(self.small).get(_IN_USE)\n", "        return\n        holder = vars(self.small).get(_IN_USE)\n")],
 "6-trace-after-refusal": [("sr_plugin/switch/routing.py", "        self.trace, self.switch_step, self.switch = [], None, None  # a call refused here reports no steps\n", ""),
                           ("sr_plugin/pipeline/calls.py", "        try:\n            self._observe_steps(scheduler)", "        check_scheduler_order(scheduler)\n        try:\n            self._observe_steps(scheduler)")],
}


def run_sequences() -> None:
    """The CI run of tests/test_random_sequences.py, without pytest or shrinking: one line per (family, seed)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_random_sequences as t

    n = int(os.environ.get("SR_SEQUENCE_OPS", "200")) // 4
    for family, seed in [("wan", 0), ("wan", 1), ("cogvideox", 2), ("cogvideox", 3)]:
        print(family, seed, t.run_ops(t.random_ops(random.Random(seed), n), family), flush=True)


def check(name: str) -> bool:
    saved: dict[pathlib.Path, str] = {}
    try:
        for path, old, new in REVERTS[name]:
            p = ROOT / path
            saved.setdefault(p, p.read_text())
            text = p.read_text()
            assert old in text, f"{name}: {path} no longer has the fixed code; update REVERTS"
            p.write_text(text.replace(old, new, 1))
        start = time.time()
        result = subprocess.run([sys.executable, __file__, "--sequences"], cwd=ROOT, capture_output=True, text=True)
        found = [line for line in result.stdout.splitlines() if " None" not in line[:16]]
        print(f"revert {name}: {'CAUGHT' if found else 'not caught'} ({time.time() - start:.0f} s)")
        for line in found:
            print("   ", line[:300])
        return bool(found)
    finally:
        for p, text in saved.items():
            p.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--sequences"]:
        run_sequences()
    else:
        results = [check(name) for name in (sys.argv[1:] or REVERTS)]
        sys.exit(0 if all(results) else 1)
