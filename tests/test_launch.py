"""The launch scripts validate their arguments and, with --dry-run, print every
command they would run (gcloud / sbatch / srun / python) in full, runnable form."""

import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full_env.update(env or {})
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=60)


def _commands(stdout):
    """The printed commands ('+ ...' lines) as argv lists."""
    return [shlex.split(ln[2:]) for ln in stdout.splitlines() if ln.startswith("+ ")]


def test_tpu_pod_dry_run_prints_full_gcloud_commands(tmp_path):
    weights = tmp_path / "resnet50-19c8e357.pth"
    weights.write_bytes(b"")
    r = _run("tpu_pod.sh", "--dry-run", "--name", "rsa-v4-32", "--zone", "us-central2-b",
             "--accelerator", "v4-32", "--create", "--project", "my-proj",
             "--config", "configs/ssv2.py:8", "--workdir", "gs://bkt/runs/ssv2",
             "--data_dir", "gs://bkt/tfds", "--torchvision_init", str(weights),
             "--", "--config.model.dtype=bfloat16")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    # The ImageNet init file goes to every worker's home, next to the code folder, and
    # torch (CPU, requirements-dev.txt's version) is installed to read it.
    copy = ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(weights),
            "rsa-v4-32:resnet50-19c8e357.pth", "--zone=us-central2-b", "--project=my-proj",
            "--worker=all"]
    assert cmds.pop(4) == copy
    with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
        torch_pin = next(ln.strip() for ln in f if ln.startswith("torch=="))
    torch_install = shlex.split(cmds.pop(6)[-1].removeprefix("--command="))
    assert torch_install == ["~/.local/bin/uv", "pip", "install", "-q", "--python",
                             "~/rsa_venv/bin/python", "--index-url",
                             "https://download.pytorch.org/whl/cpu", torch_pin]
    gflags = ["--zone=us-central2-b", "--project=my-proj"]
    assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "rsa-v4-32", *gflags,
                       "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    assert cmds[1][:3] == ["git", "-C", ROOT] and "archive" in cmds[1]
    tarball = cmds[1][cmds[1].index("-o") + 1]
    assert cmds[2] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                       "rsa-v4-32:rsa_jax.tar.gz", *gflags, "--worker=all"]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rsa-v4-32", *gflags, "--worker=all"]
    assert all(c[:len(ssh)] == ssh for c in cmds[3:]) and len(cmds) == 7
    # The base image's Python is 3.10: a pinned uv provides 3.11 in a venv ...
    provision = shlex.split(cmds[4][-1].removeprefix("--command="))
    assert provision == ["python3", "-m", "pip", "install", "-q", "--user", "uv==0.13.8", "&&",
                         "~/.local/bin/uv", "python", "install", "3.11", "&&",
                         "~/.local/bin/uv", "venv", "--allow-existing", "--python", "3.11",
                         "~/rsa_venv"]
    # ... which gets the requirements and the TPU wheels of requirements.txt's jax.
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        jax_pin = next(ln.strip() for ln in f if ln.startswith("jax=="))
    install = shlex.split(cmds[5][-1].removeprefix("--command="))
    assert install == ["cd", "~/rsa_jax", "&&", "~/.local/bin/uv", "pip", "install", "-q",
                       "--python", "~/rsa_venv/bin/python", "-r", "requirements.txt",
                       jax_pin.replace("jax==", "jax[tpu]==")]
    train = cmds[6][-1].removeprefix("--command=")
    assert shlex.split(train) == [
        "cd", "~/rsa_jax", "&&", "RSA_DISTRIBUTED=1", "~/rsa_venv/bin/python", "-m",
        "rsa_jax.main",
        "--config=configs/ssv2.py:8", "--workdir=gs://bkt/runs/ssv2",
        "--config.data.data_dir=gs://bkt/tfds",
        "--config.torchvision_init=../resnet50-19c8e357.pth", "--config.model.dtype=bfloat16"]


@pytest.mark.parametrize("extra, ok", [
    ([], False),
    (["--", "--config.model.dtype=bfloat16"], False),
    (["--", "--config.torchvision_init=/data/resnet50-19c8e357.pth"], True),
    (["--", "--config.init_from=/ckpt/rsa_ssv2"], True),
    (["--", "--config.from_scratch=True"], True),
    (["--", "--mode=test"], True),
])
def test_tpu_pod_refuses_a_paper_config_without_init_before_creating_anything(extra, ok):
    """Main would stop with FATAL for want of ImageNet weights only at the last step,
    after creating and provisioning the pod: the script says so before the first."""
    r = _run("tpu_pod.sh", "--dry-run", "--name", "p", "--zone", "z", "--create",
             "--accelerator", "v4-8", "--config", "configs/ssv1.py:8", "--workdir",
             "gs://b/w", *extra)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2 and r.stdout == ""
        assert "trains from ImageNet weights" in r.stderr and "--torchvision_init" in r.stderr


def test_tpu_pod_dry_run_existing_vm_detached():
    r = _run("tpu_pod.sh", "--dry-run", "--name", "pod", "--zone", "z", "--skip_install",
             "--detach", "--config", "configs/synthetic.py", "--workdir", "gs://b/w")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert not any("create" in c for c in cmds) and not any("pip" in " ".join(c) for c in cmds)
    assert not any("uv" in " ".join(c) for c in cmds)
    assert cmds[-1][-1] == ("--command=cd ~/rsa_jax && nohup env RSA_DISTRIBUTED=1 "
                            "~/rsa_venv/bin/python -m "
                            "rsa_jax.main --config=configs/synthetic.py --workdir=gs://b/w "
                            "> train.log 2>&1 &")


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--config", "configs/ssv2.py", "--workdir", "gs://b/w"], "--name is required"),
    (["--name", "p", "--config", "configs/ssv2.py", "--workdir", "gs://b/w"], "--zone is required"),
    (["--name", "p", "--zone", "z", "--config", "configs/nope.py", "--workdir", "gs://b/w"],
     "no such file 'configs/nope.py'"),
    (["--name", "p", "--zone", "z", "--config", "configs/ssv2.py", "--workdir", "/tmp/w"],
     "must be a gs:// path"),
    (["--name", "p", "--zone", "z", "--config", "configs/ssv2.py", "--workdir", "gs://b/w",
      "--create"], "--create needs --accelerator"),
    (["--name", "p", "--zone", "z", "--config", "configs/ssv2.py", "--workdir", "gs://b/w",
      "--create", "--accelerator", "a100"], "is not a TPU type"),
    (["--name", "Bad_Name", "--zone", "z", "--config", "configs/ssv2.py", "--workdir", "gs://b/w"],
     "lowercase letters"),
    (["--name", "p", "--zone"], "--zone needs a value"),
    (["--name", "p", "--zone", "z", "--config", "configs/ssv2.py", "--workdir", "gs://b/w",
      "--torchvision_init", "/nonexistent/r50.pth"], "no such file '/nonexistent/r50.pth'"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_tpu_pod_rejects_bad_arguments(args, message):
    r = _run("tpu_pod.sh", "--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


def test_gpu_host_dry_run():
    r = _run("gpu_host.sh", "--dry-run", "--config", "configs/ssv2.py", "--workdir", "/runs/a b",
             "--data_dir", "/data/tfds", "--gpus", "0,1", "--install", "--", "--mode=test")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert cmds[0][:6] == ["python3", "-m", "pip", "install", "-q", "-r"]
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        jax_pin = next(ln.strip() for ln in f if ln.startswith("jax=="))
    assert cmds[0][-1] == jax_pin.replace("jax==", "jax[cuda12]==")
    assert cmds[1] == ["env", "CUDA_VISIBLE_DEVICES=0,1", "python3", "-m", "rsa_jax.main",
                       "--config=configs/ssv2.py", "--workdir=/runs/a b",
                       "--config.data.data_dir=/data/tfds", "--mode=test"]


def test_gpu_host_dry_run_multi_host_flags():
    r = _run("gpu_host.sh", "--dry-run", "--config", "configs/ssv2.py", "--workdir", "/w",
             "--coordinator", "10.0.0.1:12345", "--num_processes", "2", "--process_id", "1")
    assert r.returncode == 0, r.stderr
    assert _commands(r.stdout) == [[
        "env", "python3", "-m", "rsa_jax.main", "--config=configs/ssv2.py", "--workdir=/w",
        "--coordinator_address=10.0.0.1:12345", "--num_processes=2", "--process_id=1"]]


@pytest.mark.parametrize("args, message", [
    (["--workdir", "/w"], "--config is required"),
    (["--config", "configs/ssv2.py"], "--workdir is required"),
    (["--config", "configs/ssv2.py", "--workdir", "/w", "--gpus", "a,b"], "--gpus 'a,b'"),
    (["--config", "configs/ssv2.py", "--workdir", "/w", "--coordinator", "h:1"],
     "needs all of --coordinator"),
    (["--config", "configs/ssv2.py", "--workdir", "/w", "--coordinator", "h", "--num_processes",
      "2", "--process_id", "0"], "expected HOST:PORT"),
    (["--config", "configs/ssv2.py", "--workdir", "/w", "--coordinator", "h:1", "--num_processes",
      "2", "--process_id", "2"], "in [0, 2)"),
])
def test_gpu_host_rejects_bad_arguments(args, message):
    r = _run("gpu_host.sh", "--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


def test_slurm_dry_run_submits_itself_then_sruns_one_process_per_node():
    r = _run("slurm_gpu.sbatch", "--dry-run", "--nodes", "4", "--gpus-per-node", "8",
             "--partition", "gpu", "--config", "configs/ssv2.py", "--workdir", "/shared/run",
             "--", "--config.model.dtype=bfloat16")
    assert r.returncode == 0, r.stderr
    sub, srun = _commands(r.stdout)
    assert sub == ["sbatch", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                   "--cpus-per-task=16", "--time=24:00:00", "--partition=gpu",
                   os.path.join(ROOT, "launch", "slurm_gpu.sbatch"), "--nodes", "4",
                   "--gpus-per-node", "8", "--partition", "gpu", "--config", "configs/ssv2.py",
                   "--workdir", "/shared/run", "--", "--config.model.dtype=bfloat16"]
    assert srun == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "env",
                    "RSA_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", "python3", "-m", "rsa_jax.main",
                    "--config=configs/ssv2.py", "--workdir=/shared/run",
                    "--config.model.dtype=bfloat16"]


def test_slurm_cpus_per_task_is_a_parameter():
    base = ["--dry-run", "--config", "configs/ssv2.py", "--workdir", "/shared/run"]
    sub = _commands(_run("slurm_gpu.sbatch", *base, "--cpus-per-task", "12").stdout)[0]
    assert "--cpus-per-task=12" in sub
    # Default: the node's 16 cores shared by its processes (8 with --per-gpu on 8 GPUs).
    sub = _commands(_run("slurm_gpu.sbatch", *base, "--per-gpu").stdout)[0]
    assert "--cpus-per-task=2" in sub and "--ntasks-per-node=8" in sub
    r = _run("slurm_gpu.sbatch", *base, "--cpus-per-task", "0")
    assert r.returncode == 2 and "--cpus-per-task '0'" in r.stderr


def test_gpu_host_refuses_python_older_than_311(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\nexec python3 -c 'import sys; sys.exit(1)'\n")
    old.chmod(0o755)
    fake_smi = tmp_path / "nvidia-smi"
    fake_smi.write_text("#!/bin/sh\n")
    fake_smi.chmod(0o755)
    r = _run("gpu_host.sh", "--config", "configs/ssv2.py", "--workdir", "/w", "--python",
             str(old), env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert r.returncode == 2 and "older than Python 3.11" in r.stderr and r.stdout == ""


def test_slurm_dry_run_inside_job_one_process_per_gpu():
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_SUBMIT_DIR": ROOT}
    r = _run("slurm_gpu.sbatch", "--dry-run", "--per-gpu", "--config", "configs/ssv2.py",
             "--workdir", "/shared/run", env=env)
    assert r.returncode == 0, r.stderr
    assert _commands(r.stdout) == [[
        "srun", "--nodes=3", "--ntasks-per-node=4", "--kill-on-bad-exit=1", "python3", "-m",
        "rsa_jax.main", "--config=configs/ssv2.py", "--workdir=/shared/run"]]


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/ssv2.py", "--workdir", "runs/x"], "must be an absolute path"),
    (["--config", "configs/ssv2.py", "--workdir", "/w", "--nodes", "0"], "--nodes '0'"),
    (["--config", "configs/ssv2.py"], "--workdir is required"),
])
def test_slurm_rejects_bad_arguments(args, message):
    r = _run("slurm_gpu.sbatch", "--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


def test_help_works_for_every_script():
    for script in ("tpu_pod.sh", "gpu_host.sh", "slurm_gpu.sbatch"):
        r = _run(script, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage:"), script


@pytest.mark.parametrize("local, visible, per_node, fails", [
    (1, 8, 1, True),     # one process per node, JAX took only GPU 0
    (8, 8, 1, False),    # one process per node with RSA_LOCAL_DEVICE_IDS=0..7
    (1, 8, 8, False),    # one process per GPU (--per-gpu)
    (1, 4, 2, True),     # two processes per node, each with one of four GPUs
    (1, 1, 1, False),    # CUDA_VISIBLE_DEVICES binds one GPU per task
])
def test_gpu_cluster_idle_gpus_are_detected(local, visible, per_node, fails):
    from rsa_jax import parallel
    def check():
        return parallel.check_gpu_visibility(local, visible, per_node, platform="gpu")
    if fails:
        with pytest.raises(RuntimeError, match=f"--ntasks-per-node={visible}.*local_device_ids"):
            check()
    else:
        check()
    # Only GPU runs are checked: TPU/CPU device counts mean something else.
    parallel.check_gpu_visibility(local, visible, per_node, platform="cpu")


def test_gpu_cluster_counts_from_environment(monkeypatch):
    from rsa_jax import parallel
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert parallel.visible_gpu_count() == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert parallel.visible_gpu_count() == 0
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "8(x2)")
    assert parallel._processes_per_node() == 8
    # Mocked live counts: 1 local device, 4 visible GPUs, 1 task per node -> stop.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "1")
    monkeypatch.setattr(parallel.jax, "local_device_count", lambda: 1)
    gpu = type("FakeGpu", (), {"platform": "gpu"})()
    monkeypatch.setattr(parallel.jax, "local_devices", lambda: [gpu])
    with pytest.raises(RuntimeError, match="4 GPUs are visible: 3 would sit idle"):
        parallel.check_gpu_visibility()
