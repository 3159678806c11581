"""`speakertune finetune`, runnable from a checkout without installing."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from speakertune.commands.finetune import main  # noqa: E402

if __name__ == "__main__":  # a spawned worker process re-imports this file: no second run
    raise SystemExit(main())
