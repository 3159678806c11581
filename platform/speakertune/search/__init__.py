"""The sweep: search-space format, Ray Tune + Optuna, the leaderboard."""
