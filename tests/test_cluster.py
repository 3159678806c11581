"""cluster.yaml is a real AWS autoscaler config that Ray's own schema validation accepts."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

GPU = ("g5", "p4")  # A10G / A100 instance families
CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_ray_validation(raw: dict) -> None:
    # What `ray up` does before touching AWS: fill defaults, merge commands, check the schema.
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [t for t, v in types.items() if v["node_config"]["InstanceType"][:2] in GPU]
    assert gpu_types, "needs a GPU worker type"
    for t in gpu_types:
        assert 0 <= types[t]["min_workers"] <= types[t]["max_workers"] <= cfg["max_workers"]
    # the project is shipped to every node and installed there from the lock, Ray run from it
    assert "~/speakertune" in cfg["file_mounts"]
    for key in ("worker_setup_commands", "head_setup_commands"):
        assert any("make venv" in c for c in cfg[key]), key
        assert not any("pip install" in c for c in cfg[key]), f"{key}: a resolve on the node"
    for key in ("worker_start_ray_commands", "head_start_ray_commands"):
        assert all("ray " not in c or ".venv/bin/ray" in c for c in cfg[key]), key
        # token authentication on every node, with the token file_mounts copies there
        assert all("RAY_AUTH_MODE=token" in c for c in cfg[key] if "ray start" in c), key
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    images = {t["node_config"].get("ImageId") for t in types.values()}
    assert len(images) == 1 and "nvidia-driver" in images.pop()  # one named image everywhere
    # no authentication on the dashboard: loopback only, reached through `ray dashboard`
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    assert not any("0.0.0.0" in c for c in cfg["head_start_ray_commands"])


def test_validation_rejects_a_broken_config(raw: dict) -> None:
    # The check above is only worth something if the schema bites: a misspelt key must fail.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_g5"]["min_wrkers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrkers"):
        validate_config(prepare_config(bad))


# ---------------------------------------------------------------- 64 GPUs, header commands


def test_cluster_yaml_reaches_64_gpus_and_has_a_cpu_worker_type(raw: dict) -> None:
    from speakertune.search.cluster import autoscaler_limits

    limits = autoscaler_limits(prepare_config(copy.deepcopy(raw)))
    assert limits["GPU"] == 64
    types = raw["available_node_types"]
    cpu_types = [t for t, v in types.items() if t != raw["head_node_type"]
                 and v["resources"].get("GPU", 0) == 0 and v["max_workers"] > 0]
    assert cpu_types, "needs a CPU worker type for Ray Data"
    # the ECAPA space's trial (4 CPU + 1 GPU Train worker) fits the smallest GPU node
    assert min(v["resources"]["CPU"] for v in types.values() if v["resources"].get("GPU")) >= 4


def _header_commands() -> list[str]:
    """The commands in cluster.yaml's header, continuation lines joined."""
    lines = [ln[1:].strip() for ln in CLUSTER.read_text().splitlines() if ln.startswith("#   ")]
    out, cur = [], ""
    for ln in lines:
        cur += ln.split("  #")[0].rstrip(" \\") + " "
        if not ln.rstrip().endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def test_header_commands_are_exact() -> None:
    import shlex

    from speakertune.commands.sweep import build_parser

    cmds = _header_commands()
    assert [c.split()[:2] for c in cmds if c.startswith("ray ")][:3] == [
        ["ray", "get-auth-token"], ["ray", "up"], ["ray", "dashboard"]]
    submit = next(c for c in cmds if "ray job submit" in c)
    assert submit.startswith("RAY_AUTH_MODE=token ")  # the job API asks for the shared token
    argv = shlex.split(submit.split(" -- ", 1)[1])
    assert argv[:2] == ["python", "jobs/sweep.py"] and (CLUSTER.parent / argv[1]).is_file()
    args = build_parser().parse_args(argv[2:])  # every flag exists, as written
    assert args.storage.startswith("s3://") and args.report_dir.startswith("/home/ubuntu/")
    rsync = next(c for c in cmds if "rsync-down" in c)
    assert args.report_dir in rsync  # fetches the report from where the job wrote it
    assert "ray dashboard cluster.yaml" in cmds[2] and "127.0.0.1:8265" in submit


# What each call of Ray's AWS provider (ray/autoscaler/_private/aws, the locked Ray) needs from
# IAM: boto3's resource collections (ec2.instances.filter...) are Describe* calls.
AWS_CALL_ACTIONS = {
    "create_instances": "ec2:RunInstances", "terminate_instances": "ec2:TerminateInstances",
    "create_tags": "ec2:CreateTags", "instances.filter": "ec2:DescribeInstances",
    "describe_instance_types": "ec2:DescribeInstanceTypes",
    "describe_images": "ec2:DescribeImages", "subnets.all": "ec2:DescribeSubnets",
    "subnets.filter": "ec2:DescribeSubnets",
    "security_groups.filter": "ec2:DescribeSecurityGroups",
    "key_pairs.filter": "ec2:DescribeKeyPairs", "create_key_pair": "ec2:CreateKeyPair",
}
# Calls made only for settings cluster.yaml does not use: a group of Ray's own (we name ours),
# a default instance profile and role (we name ours), launch templates, stopped-node reuse
# (cache_stopped_nodes: false).
AWS_CALLS_NOT_MADE = {"create_security_group", "create_instance_profile", "create_role",
                      "describe_launch_template_versions", "start_instances", "stop_instances"}


def _policy_actions(name: str) -> dict[str, list]:
    """action -> the Resource of each statement allowing it, in docs/aws/``name``."""
    import json

    doc = json.loads((CLUSTER.parent / "docs" / "aws" / name).read_text())
    out: dict[str, list] = {}
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow"
        for action in st["Action"] if isinstance(st["Action"], list) else [st["Action"]]:
            out.setdefault(action, []).append(st["Resource"])
    return out


def test_iam_policies_allow_every_call_rays_aws_provider_makes(raw: dict) -> None:
    import re

    import ray.autoscaler._private.aws as aws_pkg

    src = "".join(p.read_text() for p in Path(aws_pkg.__file__).parent.glob("*.py"))
    found = {m.group(2) for m in re.finditer(
        r"\b(ec2|ec2_fail_fast|client|iam)(?:\.meta\.client)?\.([a-z_]+(?:\.(?:all|filter))?)\b",
        src)} - {"amazonaws"}  # fmt: skip
    assert found == set(AWS_CALL_ACTIONS) | AWS_CALLS_NOT_MADE  # a new call: map it here
    types = raw["available_node_types"].values()
    for policy in ("launcher-policy.json", "head-role-policy.json"):
        actions = _policy_actions(policy)
        assert set(AWS_CALL_ACTIONS.values()) <= set(actions), policy
        if any(str(t["node_config"]["ImageId"]).startswith("resolve:ssm:") for t in types):
            assert "ssm:GetParameters" in actions  # RunInstances resolves it as the caller
        passable = " ".join(r for res in actions["iam:PassRole"] for r in res)
        for t in types:  # every node's instance profile (named as its role) can be handed over
            assert f"role/{t['node_config']['IamInstanceProfile']['Name']}" in passable
    for policy in ("head-role-policy.json", "worker-role-policy.json"):
        actions = _policy_actions(policy)
        assert {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject",
                "s3:DeleteObject"} <= set(actions), policy


def test_every_node_joins_the_admin_only_security_group(raw: dict) -> None:
    """Without SecurityGroupIds Ray's AWS provider creates a group with SSH open to 0.0.0.0/0
    (its _create_default_ssh_inbound_rules); docs/cluster.md creates one for the admin CIDR."""
    groups = {tuple(t["node_config"].get("SecurityGroupIds") or ())
              for t in raw["available_node_types"].values()}
    assert groups == {("sg-REPLACE-ME",)}
    doc = (CLUSTER.parent / "docs" / "cluster.md").read_text()
    assert "aws ec2 create-security-group" in doc and "--port 22 --cidr" in doc
    lines = doc.split("## AWS permissions and network")[1].split("```bash")[1].split("```")[0]
    assert "--cidr" in lines and "0.0.0.0/0" not in lines


# ---------------------------------------------------------------- concurrency rule (pure)


def test_fixed_rule_divides_the_resources_present() -> None:
    from speakertune.search.cluster import plan_concurrency

    assert plan_concurrency({"CPU": 2, "GPU": 0}, {"CPU": 2}, None)[0] == 1
    assert plan_concurrency({"CPU": 2, "GPU": 0}, {"CPU": 7}, None)[0] == 3
    n, line = plan_concurrency({"CPU": 2, "GPU": 0}, {"CPU": 64}, 8)
    assert n == 8 and "[fixed rule]" in line and "capped by search.max_concurrent=8" in line
    # GPUs bind first: 4 GPUs / 2 per trial, although the CPUs would fit 16 trials
    assert plan_concurrency({"CPU": 4, "GPU": 2}, {"CPU": 64, "GPU": 4}, None)[0] == 2
    assert plan_concurrency({"CPU": 1}, {"CPU": 64}, None, num_samples=5)[0] == 5


def test_the_head_memory_caps_concurrency() -> None:
    from speakertune.search.cluster import TRIAL_HEAD_MEMORY, plan_concurrency, trial_head_memory

    gib = 2**30
    # 64 GPUs reachable, but a 32 GiB head (~21 GiB of Ray memory) holds 7 trials' actors
    n, line = plan_concurrency({"CPU": 8, "GPU": 1}, {"CPU": 8}, None, {"CPU": 776, "GPU": 64},
                               num_samples=100, head_memory=21 * gib)  # fmt: skip
    assert n == 21 * gib // TRIAL_HEAD_MEMORY == 7
    assert "capped by head memory=7 (21.0 GiB, 3 GiB per trial" in line
    # cluster.yaml's head (r6i.12xlarge, ~260 GiB of Ray memory) holds all 64
    assert plan_concurrency({"CPU": 8, "GPU": 1}, {"CPU": 8}, None, {"CPU": 776, "GPU": 64},
                            num_samples=100, head_memory=260 * gib)[0] == 64  # fmt: skip
    # a laptop smaller than one trial's reservation still runs one trial, holding all of it
    assert plan_concurrency({"CPU": 1}, {"CPU": 2}, None, head_memory=2 * gib)[0] == 1
    assert trial_head_memory(2 * gib) == 2 * gib and trial_head_memory(None) == TRIAL_HEAD_MEMORY


def test_fixed_rule_refuses_a_trial_that_never_fits() -> None:
    from speakertune.search.cluster import ClusterError, plan_concurrency

    with pytest.raises(ClusterError, match="a trial needs 4 CPU \\+ 1 GPU .* 8 CPU \\+ 0 GPU"):
        plan_concurrency({"CPU": 4, "GPU": 1}, {"CPU": 8, "GPU": 0}, 3)


def test_autoscaling_rule_uses_the_configured_maximum() -> None:
    from speakertune.search.cluster import ClusterError, plan_concurrency

    # a CPU-only head at start: 64 GPUs are reachable, the space caps at 40
    n, line = plan_concurrency({"CPU": 8, "GPU": 1}, {"CPU": 8}, 40, {"CPU": 776, "GPU": 64})
    assert n == 40 and "[autoscaling rule]" in line and "up now: 8 CPU + 0 GPU" in line
    assert plan_concurrency({"CPU": 8, "GPU": 1}, {"CPU": 8}, None, {"CPU": 776, "GPU": 64},
                            num_samples=100)[0] == 64  # fmt: skip
    assert plan_concurrency({"CPU": 8, "GPU": 2}, {}, None, {"CPU": 776, "GPU": 64})[0] == 32
    with pytest.raises(ClusterError, match="raise max_workers"):
        plan_concurrency({"CPU": 4, "GPU": 16}, {}, None, {"CPU": 776, "GPU": 8})


def test_autoscaler_limits_respect_the_global_max_workers() -> None:
    from speakertune.search.cluster import autoscaler_limits

    cfg = {
        "max_workers": 3, "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 2}},
            "small": {"max_workers": 4, "resources": {"CPU": 4, "GPU": 1}},
            "big": {"max_workers": 2, "resources": {"CPU": 16, "GPU": 8}},
        },
    }  # fmt: skip
    # 3 workers at most: for GPUs the two big nodes + one small; for CPUs the same
    assert autoscaler_limits(cfg) == {"CPU": 2 + 16 * 2 + 4, "GPU": 8 * 2 + 1}
    cfg["max_workers"] = 100  # per-type maxima bind
    assert autoscaler_limits(cfg) == {"CPU": 2 + 32 + 16, "GPU": 16 + 4}


def test_autoscaler_config_without_worker_resources_is_one_clear_error(tmp_path: Path) -> None:
    from speakertune.search.cluster import ClusterError, load_autoscaler_limits

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"head_node_type": "head", "available_node_types": {
        "head": {"resources": {"GPU": 0}}, "gpu": {"max_workers": 2, "resources": {}}}}))
    with pytest.raises(ClusterError, match="c.yaml: no worker node type states its resources"):
        load_autoscaler_limits(path)
    path.write_text("max_workers: [\n")
    with pytest.raises(ClusterError, match="cannot read the autoscaler config") as err:
        load_autoscaler_limits(path)
    assert "\n" not in str(err.value)


def test_local_storage_is_refused_where_trials_leave_the_node() -> None:
    from speakertune.search.cluster import ClusterError, check_storage

    check_storage("/abs/runs", nodes=1, autoscaling=False, shared=False)  # one machine: fine
    check_storage("s3://b/p", nodes=5, autoscaling=True, shared=False)
    check_storage("/mnt/nfs/runs", nodes=5, autoscaling=False, shared=True)  # explicit opt-out
    for nodes, autoscaling in ((3, False), (1, True)):
        with pytest.raises(ClusterError) as err:
            check_storage("/abs/runs", nodes=nodes, autoscaling=autoscaling, shared=False)
        msg = str(err.value)
        assert "\n" not in msg and "--storage s3://" in msg and "--shared-storage" in msg


# ---------------------------------------------------------------- on a real Ray cluster


def test_rules_on_a_real_ray_cluster(ray_local, tmp_path: Path) -> None:
    """The fixed rule reads the live cluster (2 CPUs, 1 node); given an autoscaler config the
    autoscaling rule sizes against its maximum instead, and a local --storage is refused."""
    from speakertune.search.cluster import (
        TRIAL_HEAD_MEMORY,
        ClusterError,
        alive_nodes,
        check_storage,
        cluster_concurrency,
    )

    lines: list[str] = []
    n, autoscaling, per_trial = cluster_concurrency({"CPU": 1}, None, 10, None, lines.append)
    head = ray_local.cluster_resources()["memory"]  # one node: the head's is the cluster's
    assert (n, autoscaling) == (min(int(ray_local.cluster_resources()["CPU"]),
                                    max(1, int(head // TRIAL_HEAD_MEMORY))), False)  # fmt: skip
    assert per_trial == min(head, TRIAL_HEAD_MEMORY)
    assert "[fixed rule]" in lines[-1]
    assert alive_nodes() == 1
    check_storage(str(tmp_path), alive_nodes(), autoscaling, shared=False)

    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump({
        "max_workers": 3, "head_node_type": "head",
        "available_node_types": {"head": {"resources": {"CPU": 2}},
                                 "gpu": {"max_workers": 3, "resources": {"CPU": 4, "GPU": 1}}},
    }))  # fmt: skip
    n, autoscaling, _ = cluster_concurrency({"CPU": 1, "GPU": 1}, 8, 10, config, lines.append)
    assert (n, autoscaling) == (min(3, max(1, int(head // TRIAL_HEAD_MEMORY))), True)
    assert "[autoscaling rule]" in lines[-1]
    with pytest.raises(ClusterError, match="autoscales"):
        check_storage(str(tmp_path), alive_nodes(), autoscaling, shared=False)


# ---------------------------------------------------------------- joining a cluster


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_answers_fails_at_once() -> None:
    import time

    from speakertune.search.ray_runtime import RayConnectError, probe_address

    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(RayConnectError, match=f"nothing answers at --address 127.0.0.1:{port}"):
        probe_address(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 5  # Ray's own connect would retry for minutes
    with pytest.raises(RayConnectError, match="expected HOST:PORT"):
        probe_address("head-node")
    probe_address("auto")  # left to Ray: it finds the local cluster itself
    probe_address("ray://head:10001")


@pytest.mark.parametrize("job", ["train", "sweep"])
def test_jobs_give_one_line_for_an_unreachable_cluster(job, tiny_corpus, tmp_path) -> None:
    import subprocess
    import sys

    from e2e_sweep import tiny_space

    spec = tiny_space(tiny_corpus)
    space, config = tmp_path / "tiny.yaml", tmp_path / "cfg.yaml"
    space.write_text(yaml.safe_dump(spec))
    config.write_text(yaml.safe_dump(spec["base"]))
    repo = Path(__file__).resolve().parents[1]
    args = ["--space", str(space)] if job == "sweep" else ["--config", str(config)]
    address = f"127.0.0.1:{_closed_port()}"
    out = subprocess.run([sys.executable, str(repo / f"jobs/{job}.py"), *args, "--address", address,
                          "--storage", f"s3://bucket/{job}"],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: nothing answers at --address {address} (Connection refused): is a "
                      "Ray head running there, with its GCS port reachable from here?"]  # fmt: skip
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- run files on S3


def test_progress_history_and_tensorboard_land_in_s3(s3_server, monkeypatch, tmp_path) -> None:
    """With s3:// storage the rank-0 files go to the run's storage through pyarrow: the log
    and history accumulate across writers (a resumed worker is a new writer) and the event
    files are valid TensorBoard records, listed the way TensorBoard's S3 reader lists them."""
    import numpy as np
    from speakertune.train.progress import Progress, TrialLog, read_history
    from test_trainer import _read_events

    for key, value in (("AWS_ACCESS_KEY_ID", s3_server.access_key),
                       ("AWS_SECRET_ACCESS_KEY", s3_server.secret_key),
                       ("AWS_ENDPOINT_URL", s3_server.endpoint),
                       ("AWS_REGION", s3_server.region)):  # fmt: skip
        monkeypatch.setenv(key, value)
    s3_server.make_bucket("runfiles")
    run = "s3://runfiles/sweep/train_runs/t1"
    for epoch in (1, 2):  # two writers, as after a worker restart
        show = Progress(run)
        show(f"epoch {epoch}/2")
        show.record({"epoch": epoch, "train_loss": np.float32(1.0 / epoch)})
        TrialLog(run).log_epoch({"train_loss": 1.0 / epoch, "val_eer_cosine": 0.1}, epoch)
    labels = np.array([0, 1] * 20)
    det = TrialLog(run).log_det({"cosine": (labels + np.linspace(0, 1, 40), labels)}, 2)

    client = s3_server.client()
    body = client.get_object(Bucket="runfiles", Key="sweep/train_runs/t1/progress.log")["Body"]
    assert body.read().decode() == "epoch 1/2\nepoch 2/2\n"
    assert [h["epoch"] for h in read_history(run)] == [1, 2]
    assert read_history(run)[1]["train_loss"] == pytest.approx(0.5)
    assert det == f"{run}/det.png"
    assert client.head_object(Bucket="runfiles", Key="sweep/train_runs/t1/det.png")[
        "ContentLength"] > 1000  # fmt: skip
    listed = client.list_objects(Bucket="runfiles", Prefix="sweep/train_runs/t1/tensorboard/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert len(keys) == 3 and all("events.out.tfevents." in k for k in keys)
    scalars, images = {}, set()
    for key in keys:
        path = tmp_path / "events"
        path.write_bytes(client.get_object(Bucket="runfiles", Key=key)["Body"].read())
        for ev in _read_events(path):
            for v in ev.summary.value:
                if v.HasField("image"):
                    images.add(v.tag)
                else:
                    scalars.setdefault(v.tag, {})[ev.step] = v.simple_value
    assert scalars["train/loss"] == {1: 1.0, 2: 0.5} and "val/det" in images


def test_rsync_excludes_copy_every_tracked_file(raw: dict, tmp_path: Path) -> None:
    """What `ray up` copies to each node, with Ray's own rsync arguments and the real rsync:
    every file git tracks arrives (an unanchored `data` once dropped platform/speakertune/data/),
    and the local corpus, runs, venv, git folder and GPU bundle stay behind."""
    import shutil
    import subprocess

    from ray.autoscaler._private.command_runner import SSHCommandRunner

    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (.ci/run installs Debian's rsync)")
    repo = CLUSTER.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    src, dest = tmp_path / "src", tmp_path / "dest"
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / rel, src / rel, follow_symlinks=False)
    left = ["data/synth/manifest.parquet", "runs/quickstart/leaderboard.md", ".venv/bin/python",
            ".git/HEAD", "benchmarks/gpu/bundle/ray.whl", "platform/speakertune/__pycache__/x.pyc"]
    for rel in left:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    args = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_exclude": raw["rsync_exclude"]})
    subprocess.run(["rsync", "-a", *args, f"{src}/", f"{dest}/"], check=True)
    missing = [rel for rel in tracked if not (dest / rel).exists()]
    assert not missing, f"not copied to the nodes: {missing[:5]}"
    assert not [rel for rel in left if (dest / rel).exists()]


def test_local_data_is_refused_on_a_multi_node_cluster(tmp_path: Path) -> None:
    from speakertune.config import resolve
    from speakertune.data.paths import absolute_paths
    from speakertune.search.cluster import ClusterError, check_local_data

    cfg = absolute_paths(resolve({"data": {"corpus": "manifest", "manifest": "vox/m.parquet"},
                                  "augment": {"noise_prob": 0.5}}), tmp_path)  # fmt: skip
    check_local_data(cfg, nodes=1, autoscaling=False, shared=False)  # one node: its own disk
    check_local_data(cfg, nodes=3, autoscaling=False, shared=True)  # a shared mount
    for nodes, autoscaling, where in ((3, False, "has 3 nodes"), (1, True, "autoscales")):
        with pytest.raises(ClusterError) as err:
            check_local_data(cfg, nodes=nodes, autoscaling=autoscaling, shared=False)
        msg = str(err.value)
        assert msg.startswith(f"data.manifest: {tmp_path / 'vox/m.parquet'} is a local path")
        assert where in msg and "prepare publish" in msg and "\n" not in msg
    cfg["data"]["manifest"] = "s3://bucket/vox/m.parquet"  # builtin banks are built per node
    check_local_data(cfg, nodes=3, autoscaling=True, shared=False)


def test_multi_worker_trials_are_packed_on_one_node() -> None:
    from speakertune.config import resolve
    from speakertune.train.driver import _scaling_config

    two = _scaling_config(resolve({"trainer": {"num_workers": 2, "use_gpu": True}}))
    assert two.placement_strategy == "STRICT_PACK" and two.num_workers == 2
    assert _scaling_config(resolve({})).placement_strategy == "PACK"


def test_a_local_provider_cluster_takes_the_fixed_rule(tmp_path: Path) -> None:
    """`ray up` with Ray's local provider (fixed machines) writes a bootstrap config whose one
    node type states no resources: a sweep submitted there must plan by the live cluster, not
    stop with "no worker node type states its resources"."""
    from speakertune.search.cluster import load_autoscaler_limits

    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump({
        "provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]},
        "head_node_type": "local.cluster.node",
        "available_node_types": {"local.cluster.node": {"node_config": {}, "resources": {},
                                                        "min_workers": 1, "max_workers": 1}},
    }))
    assert load_autoscaler_limits(path) is None
