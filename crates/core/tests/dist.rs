//! Data-parallel collectives across real processes.
//!
//! Each test re-runs this test binary twice (`--exact <worker> --include-ignored`) with
//! `KILN_DIST_TEST_ROLE` and the rank and ports in the environment; the `worker_*` tests do the
//! work in the child processes and return at once anywhere else. The parent kills a child that
//! runs longer than `CHILD_LIMIT`, so a hang fails the test instead of stalling CI.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use kiln::backend::{Autodiff, Flex};
use kiln::dist::{Dist, DistConfig, Reduce};

type B = Flex;
type AB = Autodiff<Flex>;

const ROLE: &str = "KILN_DIST_TEST_ROLE";
const RANK: &str = "KILN_DIST_TEST_RANK";
const ORCH_PORT: &str = "KILN_DIST_TEST_ORCH_PORT";
const DATA_PORT: &str = "KILN_DIST_TEST_DATA_PORT";
const CHILD_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------------

/// `n` distinct free TCP ports, outside the ephemeral range.
fn free_ports(n: usize) -> Vec<u16> {
    kiln::dist::free_ports(n).expect("free ports")
}

struct Finished {
    code: Option<i32>,
    output: String,
    elapsed: Duration,
    killed: bool,
}

fn spawn_worker(worker: &str, rank: usize, orch_port: u16, data_port: u16) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([worker, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .env(ROLE, worker)
        .env(RANK, rank.to_string())
        .env(ORCH_PORT, orch_port.to_string())
        .env(DATA_PORT, data_port.to_string())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a worker process")
}

/// Waits for every child (killing those still running after `CHILD_LIMIT`).
fn wait_all(children: Vec<Child>) -> Vec<Finished> {
    let start = Instant::now();
    let mut readers = Vec::new();
    let mut children: Vec<(Child, Option<Finished>)> = children
        .into_iter()
        .map(|mut c| {
            let mut out = c.stdout.take().unwrap();
            let mut err = c.stderr.take().unwrap();
            readers.push((
                std::thread::spawn(move || {
                    let mut s = String::new();
                    let _ = out.read_to_string(&mut s);
                    s
                }),
                std::thread::spawn(move || {
                    let mut s = String::new();
                    let _ = err.read_to_string(&mut s);
                    s
                }),
            ));
            (c, None)
        })
        .collect();
    while children.iter().any(|(_, f)| f.is_none()) {
        for (child, done) in children.iter_mut().filter(|(_, f)| f.is_none()) {
            if let Some(status) = child.try_wait().unwrap() {
                *done = Some(Finished {
                    code: status.code(),
                    output: String::new(),
                    elapsed: start.elapsed(),
                    killed: false,
                });
            } else if start.elapsed() > CHILD_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                *done = Some(Finished {
                    code: None,
                    output: String::new(),
                    elapsed: start.elapsed(),
                    killed: true,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children
        .into_iter()
        .zip(readers)
        .map(|((_, done), (out, err))| {
            let mut done = done.unwrap();
            done.output = format!(
                "--- stdout ---\n{}\n--- stderr ---\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
            done
        })
        .collect()
}

/// Runs `worker` as ranks 0 and 1 and returns their results.
fn run_pair(worker: &str) -> Vec<Finished> {
    let ports = free_ports(3);
    let children = (0..2)
        .map(|rank| spawn_worker(worker, rank, ports[0], ports[1 + rank]))
        .collect();
    let done = wait_all(children);
    for (rank, d) in done.iter().enumerate() {
        eprintln!(
            "{worker} rank {rank}: exit {:?} after {:.2} s",
            d.code,
            d.elapsed.as_secs_f64()
        );
    }
    done
}

fn assert_ok(worker: &str, done: &[Finished]) {
    assert_ranks_ok(worker, done.iter().enumerate());
}

fn assert_ranks_ok<'a>(worker: &str, done: impl Iterator<Item = (usize, &'a Finished)>) {
    for (rank, d) in done {
        assert!(
            !d.killed && d.code == Some(0),
            "{worker} rank {rank} failed (exit {:?}, killed {}):\n{}",
            d.code,
            d.killed,
            d.output
        );
        let marker = format!("WORKER-OK rank={rank}");
        assert!(
            d.output.contains(&marker),
            "{worker} rank {rank}: no `{marker}` (did the worker run?):\n{}",
            d.output
        );
    }
}

#[test]
fn three_consecutive_all_reduces_across_two_processes() {
    let done = run_pair("worker_all_reduces");
    assert_ok("worker_all_reduces", &done);
}

#[test]
fn all_reduce_grads_averages_gradients() {
    let done = run_pair("worker_grads");
    assert_ok("worker_grads", &done);
}

#[test]
fn agree_detects_a_mismatch() {
    let done = run_pair("worker_agree");
    assert_ok("worker_agree", &done);
}

#[test]
fn dead_peer_is_an_error_not_a_hang() {
    let done = run_pair("worker_dead_peer");
    // Rank 1 leaves without a word after the first all-reduce.
    assert_ranks_ok("worker_dead_peer", done.iter().enumerate().skip(1));
    let d = &done[0];
    assert!(
        !d.killed && d.code == Some(0),
        "rank 0 hung or failed (exit {:?}, killed {}):\n{}",
        d.code,
        d.killed,
        d.output
    );
    assert!(
        d.output.contains("WORKER-OK rank=0") && d.output.contains("DEAD-PEER-ERROR"),
        "rank 0 did not report the dead peer:\n{}",
        d.output
    );
    assert!(
        d.elapsed < Duration::from_secs(30),
        "rank 0 took {:?} to notice the dead peer",
        d.elapsed
    );
}

#[test]
fn two_device_threads_in_one_process() {
    let ports = free_ports(2);
    let done = wait_all(vec![spawn_worker(
        "worker_local_threads",
        0,
        ports[0],
        ports[1],
    )]);
    assert_ok("worker_local_threads", &done);
}

#[test]
fn two_processes_with_two_device_threads_each() {
    let done = run_pair("worker_two_by_two");
    assert_ok("worker_two_by_two", &done);
}

#[test]
fn world_size_one_is_the_identity() {
    let cfg = DistConfig::default();
    assert_eq!(cfg.world_size(), 1);
    let device = Default::default();
    let dist = Dist::init::<B>(&cfg, 0, &device).unwrap();
    assert!(dist.is_main());
    assert_eq!((dist.rank(), dist.world_size()), (0, 1));
    let x = Tensor::<B, 1>::from_floats([1.0, 2.0], &device);
    let y = dist.all_reduce(x, Reduce::Mean).unwrap();
    assert_eq!(values(y), vec![1.0, 2.0]);
    assert_eq!(
        dist.all_reduce_f64::<B>(&[3.0], &device).unwrap(),
        vec![3.0]
    );
    dist.agree::<B>("anything", b"x", &device).unwrap();
    dist.finish().unwrap();
}

#[test]
fn bad_configs_are_errors() {
    let two = DistConfig {
        num_nodes: 2,
        ..DistConfig::default()
    };
    two.validate().unwrap();
    assert_eq!(two.world_size(), 2);
    let err = |cfg: DistConfig| format!("{:#}", cfg.validate().unwrap_err());
    assert!(
        err(DistConfig {
            node_rank: 2,
            ..two.clone()
        })
        .contains("node_rank 2 is out of range")
    );
    assert!(
        err(DistConfig {
            devices_per_node: 0,
            ..two.clone()
        })
        .contains("devices_per_node")
    );
    assert!(
        err(DistConfig {
            num_nodes: 0,
            ..two.clone()
        })
        .contains("num_nodes")
    );
    for bad in [
        "127.0.0.1",
        "127.0.0.1:x",
        ":29500",
        "127.0.0.1:0",
        "http://a:1",
        "",
    ] {
        let e = err(DistConfig {
            orchestrator: bad.into(),
            ..two.clone()
        });
        assert!(e.contains("orchestrator address"), "{bad}: {e}");
    }
    assert!(
        err(DistConfig {
            timeout_secs: 0.0,
            ..two.clone()
        })
        .contains("timeout")
    );
    DistConfig {
        orchestrator: "ws://[::1]:29500".into(),
        ..two.clone()
    }
    .validate()
    .unwrap();
    // A bad local rank is an error of `init`.
    let device = Default::default();
    let e = Dist::init::<B>(&DistConfig::default(), 1, &device).unwrap_err();
    assert!(format!("{e:#}").contains("local_rank 1"), "{e:#}");
}

#[test]
fn a_taken_data_port_is_an_error_not_a_hang() {
    let ports = free_ports(2);
    // Another program listens on this node's data port.
    let _taken = TcpListener::bind(("0.0.0.0", ports[1])).unwrap();
    let cfg = DistConfig {
        num_nodes: 2,
        node_rank: 1,
        orchestrator: format!("127.0.0.1:{}", ports[0]),
        start_orchestrator: false,
        data_port: ports[1],
        timeout_secs: 30.0,
        ..DistConfig::default()
    };
    let start = Instant::now();
    let e = format!(
        "{:#}",
        Dist::init::<B>(&cfg, 0, &Default::default()).unwrap_err()
    );
    assert!(
        e.contains(&format!("data port {} is in use", ports[1])),
        "{e}"
    );
    // Before any wait for the (absent) orchestrator.
    assert!(start.elapsed() < Duration::from_secs(10), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Worker side (child processes)
// ---------------------------------------------------------------------------------------------

struct Env {
    rank: usize,
    orch_port: u16,
    data_port: u16,
}

/// The worker's environment when this process runs `name`; `None` elsewhere.
fn worker_env(name: &str) -> Option<Env> {
    if std::env::var(ROLE).ok()? != name {
        return None;
    }
    let var = |k: &str| std::env::var(k).unwrap().parse().unwrap();
    Some(Env {
        rank: var(RANK),
        orch_port: var(ORCH_PORT) as u16,
        data_port: var(DATA_PORT) as u16,
    })
}

fn config(env: &Env, timeout_secs: f64) -> DistConfig {
    DistConfig {
        num_nodes: 2,
        node_rank: env.rank,
        devices_per_node: 1,
        orchestrator: format!("127.0.0.1:{}", env.orch_port),
        start_orchestrator: true,
        data_port: env.data_port,
        timeout_secs,
    }
}

fn values(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

fn ok(rank: usize) {
    println!("WORKER-OK rank={rank}");
}

#[test]
#[ignore = "worker process of three_consecutive_all_reduces_across_two_processes"]
fn worker_all_reduces() {
    let Some(env) = worker_env("worker_all_reduces") else {
        return;
    };
    let device = Default::default();
    let started = Instant::now();
    let dist = Dist::init::<B>(&config(&env, 30.0), 0, &device).unwrap();
    eprintln!("rank {} registered in {:?}", env.rank, started.elapsed());
    assert_eq!((dist.rank(), dist.world_size()), (env.rank, 2));
    assert_eq!(dist.is_main(), env.rank == 0);
    let r = env.rank as f32;

    // 1. Mean of 5 values: rank r holds (r + 1) * [1, 2, 3, 4, 5] → 1.5 * [1, ..., 5].
    let x = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0, 4.0, 5.0], &device) * (r + 1.0);
    let y = values(dist.all_reduce(x, Reduce::Mean).unwrap());
    assert_eq!(y, vec![1.5, 3.0, 4.5, 6.0, 7.5]);

    // 2. Sum of a single value (shorter than the ring of nodes): 10 + 11.
    let x = Tensor::<B, 1>::from_floats([10.0 + r], &device);
    let y = values(dist.all_reduce(x, Reduce::Sum).unwrap());
    assert_eq!(y, vec![21.0]);

    // 3. Sum of 1001 values: i + 1000 r → 2i + 1000.
    let x = Tensor::<B, 1>::from_data(
        TensorData::new((0..1001).map(|i| i as f32 + 1000.0 * r).collect(), [1001]),
        &device,
    );
    let y = values(dist.all_reduce(x, Reduce::Sum).unwrap());
    let expected: Vec<f32> = (0..1001).map(|i| 2.0 * i as f32 + 1000.0).collect();
    assert_eq!(y, expected);

    // 4. Mean of 1000 values, 5. f64 convenience, 6. more of the same: the loop a trainer runs.
    // KILN_DIST_TEST_STEPS=N (run the worker by hand) makes this a soak test.
    let n_steps: usize = std::env::var("KILN_DIST_TEST_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let steps = Instant::now();
    for step in 0..n_steps {
        let s = (step % 1000) as f32;
        let x = Tensor::<B, 1>::full([1000], s + 2.0 * r, &device);
        let y = values(dist.all_reduce(x, Reduce::Mean).unwrap());
        assert!(y.iter().all(|&v| v == s + 1.0), "step {step}");
    }
    eprintln!(
        "rank {}: {n_steps} all-reduces of 1000 f32 in {:?}",
        env.rank,
        steps.elapsed()
    );
    let s = dist
        .all_reduce_f64::<B>(&[1.0 + r as f64, 0.25, 1e6], &device)
        .unwrap();
    assert_eq!(s, vec![3.0, 0.5, 2e6]);

    dist.finish().unwrap();
    ok(env.rank);
}

/// `y = x W + b` with fixed weights.
fn linear(device: &burn::tensor::Device<AB>) -> Linear<AB> {
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 10.0).collect();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [4, 3]), device)),
        bias: Some(Param::from_tensor(Tensor::from_floats(
            [0.1, -0.2, 0.3],
            device,
        ))),
    }
}

fn batch(rank: usize, device: &burn::tensor::Device<AB>) -> Tensor<AB, 2> {
    let x: Vec<f32> = (0..8)
        .map(|i| ((i * 7 + rank * 13) % 11) as f32 / 5.0 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(x, [2, 4]), device)
}

/// Mean-squared output: the gradient of a concatenated batch is the mean of the halves'.
fn grads_of(model: &Linear<AB>, x: Tensor<AB, 2>) -> GradientsParams {
    let loss = model.forward(x).powf_scalar(2.0).mean();
    GradientsParams::from_grads(loss.backward(), model)
}

/// Rank 0 uses both layers (`l0(x) + l1(x)`), rank 1 only the first.
#[allow(clippy::ptr_arg)] // the module is the `Vec`
fn pair_grads(
    pair: &Vec<Linear<AB>>,
    rank: usize,
    device: &burn::tensor::Device<AB>,
) -> GradientsParams {
    let x = batch(rank, device);
    let y = if rank == 0 {
        pair[0].forward(x.clone()) + pair[1].forward(x)
    } else {
        pair[0].forward(x)
    };
    GradientsParams::from_grads(y.powf_scalar(2.0).mean().backward(), pair)
}

/// The weight and bias gradients of `model`; empty when it has none.
fn grad_values(model: &Linear<AB>, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let Some(w) = grads.get::<B, 2>(model.weight.id) else {
        assert!(grads.get::<B, 1>(model.bias.as_ref().unwrap().id).is_none());
        return Vec::new();
    };
    let b = grads
        .get::<B, 1>(model.bias.as_ref().unwrap().id)
        .expect("bias grad");
    assert_eq!(w.dims(), [4, 3]);
    vec![
        w.into_data().convert::<f32>().into_vec().unwrap(),
        b.into_data().convert::<f32>().into_vec().unwrap(),
    ]
}

#[test]
#[ignore = "worker process of all_reduce_grads_averages_gradients"]
fn worker_grads() {
    let Some(env) = worker_env("worker_grads") else {
        return;
    };
    let device = Default::default();
    let dist = Dist::init::<B>(&config(&env, 30.0), 0, &device).unwrap();
    let model = linear(&device);
    let mut grads = grads_of(&model, batch(env.rank, &device));
    let local = grad_values(&model, &grads);
    dist.all_reduce_grads::<AB, _>(&model, &mut grads).unwrap();
    let reduced = grad_values(&model, &grads);
    let whole = Tensor::cat(vec![batch(0, &device), batch(1, &device)], 0);
    let expected = grad_values(&model, &grads_of(&model, whole));
    assert_ne!(local, expected, "the ranks' batches should differ");
    for (got, want) in reduced.iter().flatten().zip(expected.iter().flatten()) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    // A second step: the collective keeps working.
    let mut grads = grads_of(&model, batch(1 - env.rank, &device));
    dist.all_reduce_grads::<AB, _>(&model, &mut grads).unwrap();
    for (got, want) in grad_values(&model, &grads)
        .iter()
        .flatten()
        .zip(expected.iter().flatten())
    {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    // A parameter only rank 0 uses: rank 1 contributes zeros, the mean is still over both.
    let pair = vec![linear(&device), linear(&device)];
    let mut grads = pair_grads(&pair, env.rank, &device);
    dist.all_reduce_grads::<AB, _>(&pair, &mut grads).unwrap();
    let (g0, g1) = (pair_grads(&pair, 0, &device), pair_grads(&pair, 1, &device));
    assert!(
        grad_values(&pair[1], &g1).is_empty(),
        "rank 1 skips layer 1"
    );
    for (i, layer) in pair.iter().enumerate() {
        let got = grad_values(layer, &grads);
        let a = grad_values(layer, &g0);
        let b = grad_values(layer, &g1);
        let want: Vec<f32> = if i == 0 {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .map(|(x, y)| (x + y) / 2.0)
                .collect()
        } else {
            a.iter().flatten().map(|x| x / 2.0).collect()
        };
        for (got, want) in got.iter().flatten().zip(&want) {
            assert!((got - want).abs() < 1e-6, "layer {i}: {got} vs {want}");
        }
        assert_eq!(got.iter().flatten().count(), want.len());
    }
    // The wrong backend is a clear error, not a hang.
    let e = dist
        .all_reduce(Tensor::<AB, 1>::zeros([3], &device), Reduce::Sum)
        .unwrap_err();
    assert!(format!("{e:#}").contains("inner, non-autodiff"), "{e:#}");
    dist.finish().unwrap();
    ok(env.rank);
}

#[test]
#[ignore = "worker process of agree_detects_a_mismatch"]
fn worker_agree() {
    let Some(env) = worker_env("worker_agree") else {
        return;
    };
    let device = Default::default();
    let dist = Dist::init::<B>(&config(&env, 30.0), 0, &device).unwrap();
    dist.agree::<B>("the config", b"lr=0.1 epochs=3", &device)
        .unwrap();
    let mine = format!("lr=0.1 epochs=3 rank-specific={}", env.rank);
    let e = dist
        .agree::<B>("the training configuration", mine.as_bytes(), &device)
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("disagree on the training configuration"),
        "{msg}"
    );
    eprintln!("rank {}: {msg}", env.rank);
    // A mismatch is not a collective failure: the collective keeps working.
    dist.agree::<B>("the world size", b"2", &device).unwrap();
    // Node 0 hosts the orchestrator: its finish waits for node 1 to leave first.
    let started = Instant::now();
    if env.rank == 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
    dist.finish().unwrap();
    if env.rank == 0 {
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
    ok(env.rank);
}

#[test]
#[ignore = "worker process of dead_peer_is_an_error_not_a_hang"]
fn worker_dead_peer() {
    let Some(env) = worker_env("worker_dead_peer") else {
        return;
    };
    let device = Default::default();
    let dist = Dist::init::<B>(&config(&env, 5.0), 0, &device).unwrap();
    let x = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0], &device);
    let y = values(dist.all_reduce(x, Reduce::Sum).unwrap());
    assert_eq!(y, vec![2.0, 4.0, 6.0]);
    if env.rank == 1 {
        // Leave without finishing, as a crashed worker would.
        ok(env.rank);
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let x = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0], &device);
    let e = dist.all_reduce(x, Reduce::Sum).unwrap_err();
    let msg = format!("{e:#}");
    let took = started.elapsed();
    println!("DEAD-PEER-ERROR after {took:?}: {msg}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(msg.contains("rank 0 of 2"), "{msg}");
    // Everything after is an immediate error, and dropping the handle does not hang.
    let x = Tensor::<B, 1>::from_floats([1.0], &device);
    let again = Instant::now();
    assert!(dist.all_reduce(x, Reduce::Sum).is_err());
    assert!(again.elapsed() < Duration::from_secs(1));
    drop(dist);
    ok(env.rank);
}

#[test]
#[ignore = "worker process of two_device_threads_in_one_process"]
fn worker_local_threads() {
    let Some(_env) = worker_env("worker_local_threads") else {
        return;
    };
    let cfg = DistConfig {
        devices_per_node: 2,
        timeout_secs: 30.0,
        ..DistConfig::default()
    };
    let handles: Vec<_> = (0..2)
        .map(|local| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let device = Default::default();
                let dist = Dist::init::<B>(&cfg, local, &device).unwrap();
                assert_eq!((dist.rank(), dist.world_size()), (local, 2));
                for step in 0..3 {
                    let x = Tensor::<B, 1>::from_floats([local as f32, step as f32], &device);
                    let y = values(dist.all_reduce(x, Reduce::Sum).unwrap());
                    assert_eq!(y, vec![1.0, 2.0 * step as f32]);
                }
                let s = dist.all_reduce_f64::<B>(&[local as f64], &device).unwrap();
                assert_eq!(s, vec![1.0]);
                dist.agree::<B>("x", b"same", &device).unwrap();
                let e = dist
                    .agree::<B>("the seed", &[local as u8], &device)
                    .unwrap_err();
                assert!(format!("{e:#}").contains("the seed"));
                dist.finish().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    ok(0);
}

#[test]
#[ignore = "worker process of two_processes_with_two_device_threads_each"]
fn worker_two_by_two() {
    let Some(env) = worker_env("worker_two_by_two") else {
        return;
    };
    let cfg = DistConfig {
        devices_per_node: 2,
        ..config(&env, 30.0)
    };
    let handles: Vec<_> = (0..2)
        .map(|local| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let device = Default::default();
                let dist = Dist::init::<B>(&cfg, local, &device).unwrap();
                let rank = cfg.node_rank * 2 + local;
                assert_eq!((dist.rank(), dist.world_size()), (rank, 4));
                for step in 0..3 {
                    let x = Tensor::<B, 1>::from_floats([rank as f32, step as f32], &device);
                    let y = values(dist.all_reduce(x, Reduce::Sum).unwrap());
                    assert_eq!(y, vec![6.0, 4.0 * step as f32]);
                    let x = Tensor::<B, 1>::from_floats([rank as f32, 1.0, -2.0], &device);
                    let y = values(dist.all_reduce(x, Reduce::Mean).unwrap());
                    assert_eq!(y, vec![1.5, 1.0, -2.0]);
                }
                dist.agree::<B>("the plan", b"same", &device).unwrap();
                dist.finish().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    ok(env.rank);
}
