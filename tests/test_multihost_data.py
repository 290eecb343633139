"""Per-host data sharding as the train loop uses it: every host reads a disjoint
shard of the split, and in each epoch (``n // global_batch`` steps) the hosts
together read every training video exactly once — epoch after epoch of the
repeated, reshuffled stream — and every validation video exactly once.

The two-process run in ``test_multihost_train.py`` checks the same on real
``jax.process_index()`` values; here the hosts are simulated by passing
``process_index`` / ``process_count`` to ``create_iterator`` (which is all a
host does differently), so many host counts are cheap to cover.
"""

import collections

import data_helpers as dh
import numpy as np
import pytest

from rsa_jax import data

N_TRAIN, N_VAL = 32, 16   # the 'tiny' synthetic_motion split sizes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    data.prepare(dh.synthetic_cfg(d))
    return d


def _host_epochs(cfg, host, hosts, global_batch, epochs, seed=0):
    """Record indices a host reads in each epoch of the training stream."""
    it = data.create_iterator(cfg, split="train", mode="train", global_batch_size=global_batch,
                              process_index=host, process_count=hosts, seed=seed)
    steps = N_TRAIN // global_batch       # steps per epoch, as in train.train_and_evaluate
    return [np.concatenate([next(it)["index"] for _ in range(steps)]) for _ in range(epochs)]


@pytest.mark.parametrize("hosts, global_batch", [(2, 8), (4, 8), (2, 16), (8, 32)])
def test_train_hosts_cover_the_split_exactly_once_per_epoch(data_dir, hosts, global_batch):
    cfg = dh.synthetic_cfg(data_dir, num_threads=1)
    per_host = [_host_epochs(cfg, p, hosts, global_batch, epochs=3) for p in range(hosts)]
    shards = [set(np.concatenate(e).tolist()) for e in per_host]
    for a in range(hosts):                # disjoint shards, over all epochs
        for b in range(a + 1, hosts):
            assert not shards[a] & shards[b], (a, b)
    for epoch in range(3):
        seen = np.concatenate([per_host[p][epoch] for p in range(hosts)])
        counts = collections.Counter(seen.tolist())
        assert sorted(counts) == list(range(N_TRAIN)) and set(counts.values()) == {1}, epoch
    # ... and the order is reshuffled between epochs (same set, new sequence).
    assert any(not np.array_equal(per_host[0][0], per_host[0][e]) for e in (1, 2))


def test_train_shards_depend_on_the_seed_not_on_the_host_count_alone(data_dir):
    cfg = dh.synthetic_cfg(data_dir, num_threads=1)
    a = _host_epochs(cfg, 0, 2, 8, epochs=1, seed=0)[0]
    b = _host_epochs(cfg, 0, 2, 8, epochs=1, seed=1)[0]
    assert sorted(a.tolist()) == sorted(b.tolist()) and not np.array_equal(a, b)


@pytest.mark.parametrize("hosts, global_batch", [(2, 4), (4, 8), (3, 6), (5, 5)])
def test_eval_hosts_cover_the_split_exactly_once(data_dir, hosts, global_batch):
    cfg = dh.synthetic_cfg(data_dir, num_threads=1)
    seen, num_batches = [], set()
    for p in range(hosts):
        batches = list(data.create_iterator(cfg, split="validation", mode="eval",
                                            global_batch_size=global_batch,
                                            process_index=p, process_count=hosts))
        num_batches.add(len(batches))    # equal, so no host waits in a collective
        seen.append([i for b in batches for i in b["index"][b["mask"] == 1].tolist()])
    flat = [i for s in seen for i in s]
    assert sorted(flat) == list(range(N_VAL)) and len(num_batches) == 1
    assert all(not set(seen[a]) & set(seen[b])
               for a in range(hosts) for b in range(a + 1, hosts))
