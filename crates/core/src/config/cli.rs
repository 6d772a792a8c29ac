//! Command-line arguments every kiln-based tool shares: the runtime flags (device, precision,
//! data-parallel layout, progress), the yacs-style `KEY VALUE` overrides, and
//! [`hoist_flags`], which lets flags follow the overrides as yacs users write them.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::backend::DeviceKind;
use crate::dist::DistConfig;
use crate::numerics::amp::Precision;
use crate::train::trainer::Strategy;

/// Device, precision, data-parallel and progress options, flattened into each tool's top-level
/// parser (Lightning's `Trainer(accelerator, devices, num_nodes, strategy, precision)`).
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Device: cpu (default backend of this build), ndarray, flex, cuda, cuda:N, wgpu or wgpu:N
    /// (the N-th adapter `doctor` lists).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: DeviceKind,
    /// Hide progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Numeric precision of training: 32, 16-mixed or bf16-mixed (default: the configuration's).
    #[arg(long, global = true)]
    pub precision: Option<Precision>,
    /// single-device or ddp (default: ddp when more than one device or node is given).
    #[arg(long, global = true)]
    pub strategy: Option<Strategy>,
    /// Devices of this node for data-parallel training, e.g. `0,1`: CUDA indices with
    /// `--device cuda`, adapter indices with `--device wgpu`; on CPU one worker per entry.
    #[arg(long, global = true, value_delimiter = ',')]
    pub devices: Vec<usize>,
    /// Nodes (processes) of a multi-node run.
    #[arg(long, global = true, default_value_t = 1)]
    pub num_nodes: usize,
    /// This node's rank, 0..num_nodes.
    #[arg(long, global = true, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT of the orchestrator of a multi-node run (node 0 starts it unless
    /// --external-orchestrator).
    #[arg(long, global = true, default_value = "127.0.0.1:29500")]
    pub orchestrator: String,
    /// The orchestrator is run elsewhere; node 0 does not start one.
    #[arg(long, global = true)]
    pub external_orchestrator: bool,
    /// This node's data-service port (default: orchestrator port + 1 + node rank).
    #[arg(long, global = true, default_value_t = 0)]
    pub data_port: u16,
    /// Seconds a collective may wait for a peer before the run stops with an error.
    #[arg(long, global = true, default_value_t = 120.0)]
    pub dist_timeout: f64,
    /// Train on one device exactly as N data-parallel ranks would: each step forwards the N
    /// ranks' batches and back-propagates the mean of their losses (see
    /// `kiln::TrainerConfig::virtual_ranks`); e.g. to check a `--devices 0,1` run on one device.
    #[arg(long, global = true, default_value_t = 1)]
    pub virtual_ranks: usize,
}

impl RuntimeArgs {
    /// Whether to draw progress bars.
    pub fn progress(&self) -> bool {
        !self.quiet
    }

    /// Devices of this node (at least one).
    pub fn local_devices(&self) -> Vec<usize> {
        if !self.devices.is_empty() {
            return self.devices.clone();
        }
        match self.device {
            DeviceKind::Cuda(i) | DeviceKind::Wgpu(Some(i)) => vec![i],
            _ => vec![0],
        }
    }

    /// The data-parallel configuration these flags ask for, or `None` for one device.
    pub fn dist_config(&self) -> Result<Option<DistConfig>> {
        let devices = self.local_devices().len();
        let parallel = devices > 1 || self.num_nodes > 1;
        if self.virtual_ranks == 0 {
            bail!("--virtual-ranks must be at least 1");
        }
        if self.virtual_ranks > 1 && parallel {
            bail!(
                "--virtual-ranks {} emulates data parallelism on one device: it cannot be \
                 combined with {devices} devices × {} nodes",
                self.virtual_ranks,
                self.num_nodes
            );
        }
        match self.strategy {
            Some(Strategy::SingleDevice) if parallel => bail!(
                "--strategy single-device contradicts {devices} devices × {} nodes",
                self.num_nodes
            ),
            Some(Strategy::SingleDevice) => return Ok(None),
            None if !parallel => return Ok(None),
            Some(Strategy::Ddp) if !parallel => {
                tracing::warn!(
                    "--strategy ddp with one device and one node: training on one device"
                );
                return Ok(None);
            }
            _ => {}
        }
        let cfg = DistConfig {
            num_nodes: self.num_nodes,
            node_rank: self.node_rank,
            devices_per_node: devices,
            orchestrator: self.orchestrator.clone(),
            start_orchestrator: !self.external_orchestrator,
            data_port: self.data_port,
            timeout_secs: self.dist_timeout,
        };
        cfg.validate()?;
        Ok(Some(cfg))
    }
}

/// Trailing yacs-style `KEY VALUE` pairs (`seed 7 simple_lstm.train.n_epochs 10`).
#[derive(Debug, Args, Clone, Default)]
pub struct Overrides {
    /// `KEY VALUE` pairs, e.g. `seed 7 SOLVER.BASE_LR 0.00035`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "KEY VALUE"
    )]
    pub opts: Vec<String>,
}

/// A configuration file plus `KEY VALUE` overrides: the arguments of every command of a
/// yacs-configured tool (the reference scripts' `--config_file` and trailing `opts`).
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// YAML configuration merged over the defaults.
    #[arg(long, alias = "config_file")]
    pub config_file: Option<PathBuf>,
    /// `KEY VALUE` overrides, e.g. `SOLVER.BASE_LR 0.00035 DATASETS.NAMES market1501`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "KEY VALUE"
    )]
    pub opts: Vec<String>,
}

/// Moves the long flags (`--name`, `--name=value`, `--name value`) that follow a subcommand's
/// trailing `KEY VALUE` pairs in front of them, so that `tool train KEY VALUE --quiet` parses
/// like `tool train --quiet KEY VALUE` (yacs users put the overrides last and flags anywhere).
/// Only flags that `command` knows are moved (its own, its subcommands', global ones); an
/// argument after `--` is never touched. Call it on `std::env::args()` before parsing.
pub fn hoist_flags(command: &clap::Command, args: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let rest: Vec<String> = iter.collect();
    // The subcommand chosen, if any: flags are looked up in it and in the top level.
    let sub = rest.iter().find_map(|a| find_subcommand(command, a));
    let takes_value = |name: &str| -> Option<bool> {
        let find = |c: &clap::Command| {
            c.get_arguments()
                .find(|a| {
                    a.get_long() == Some(name)
                        || a.get_all_aliases()
                            .is_some_and(|aliases| aliases.contains(&name))
                })
                .map(|a| a.get_action().takes_values())
        };
        sub.and_then(find).or_else(|| find(command))
    };
    let mut flags: Vec<String> = Vec::new();
    let mut positional: Vec<String> = Vec::new();
    let mut seen_positional_after_sub = false;
    let mut in_sub = sub.is_none();
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        if arg == "--" {
            positional.extend(rest[i..].iter().cloned());
            break;
        }
        if !in_sub {
            out.push(arg.clone());
            if sub.is_some_and(|s| names(s).any(|n| n == arg)) {
                in_sub = true;
            }
            i += 1;
            continue;
        }
        let long = arg.strip_prefix("--").filter(|n| !n.is_empty());
        match long.map(|n| n.split('=').next().unwrap_or(n)) {
            Some(name) if seen_positional_after_sub => match takes_value(name) {
                Some(true) if !arg.contains('=') && i + 1 < rest.len() => {
                    flags.push(arg.clone());
                    flags.push(rest[i + 1].clone());
                    i += 2;
                    continue;
                }
                Some(_) => flags.push(arg.clone()),
                None => positional.push(arg.clone()),
            },
            Some(name) => {
                // Before any KEY VALUE pair clap parses flags itself; keep the order.
                flags.push(arg.clone());
                if takes_value(name) == Some(true) && !arg.contains('=') && i + 1 < rest.len() {
                    flags.push(rest[i + 1].clone());
                    i += 1;
                }
            }
            None => {
                seen_positional_after_sub = true;
                positional.push(arg.clone());
            }
        }
        i += 1;
    }
    out.extend(flags);
    out.extend(positional);
    out
}

/// A subcommand's name and aliases.
fn names(sub: &clap::Command) -> impl Iterator<Item = &str> {
    std::iter::once(sub.get_name()).chain(sub.get_all_aliases())
}

/// The subcommand of `command` called `word` (by name or alias).
fn find_subcommand<'a>(command: &'a clap::Command, word: &str) -> Option<&'a clap::Command> {
    command
        .get_subcommands()
        .find(|s| names(s).any(|n| n == word))
}

/// The first `--flag` among a subcommand's trailing `KEY VALUE` pairs once [`hoist_flags`] has
/// moved the known flags in front of them: a flag the tool does not know (a misspelling, or a
/// flag of another subcommand). No configuration key starts with `--`.
pub fn unknown_flag(command: &clap::Command, args: &[String]) -> Option<String> {
    let start = args
        .iter()
        .position(|a| find_subcommand(command, a).is_some())?;
    let sub = find_subcommand(command, &args[start])?;
    let known = |name: &str| {
        [sub, command].iter().any(|c| {
            c.get_arguments().any(|a| {
                a.get_long() == Some(name)
                    || a.get_all_aliases()
                        .is_some_and(|aliases| aliases.contains(&name))
            })
        }) || name == "help"
    };
    args[start + 1..]
        .iter()
        .take_while(|a| a.as_str() != "--")
        .find(|a| {
            a.strip_prefix("--")
                .map(|n| n.split('=').next().unwrap_or(n))
                .is_some_and(|n| !n.is_empty() && !known(n))
        })
        .cloned()
}

/// Restores the default `SIGPIPE` behaviour so that `tool | head` ends the tool quietly instead
/// of panicking on a closed standard output (Rust ignores `SIGPIPE` by default). Call it first
/// thing in `main`.
pub fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The body of a kiln tool's `main`: allocator tuning ([`crate::alloc::retain_freed_memory`]),
/// [`hoist_flags`], parsing `args` (the program name first; clap prints usage errors and `--help`
/// itself and exits, with status 2 on an error), quiet collective logs, then `run`. The `moola`
/// and `reid` binaries are this plus [`reset_sigpipe`] and the exit status; a crate depending on
/// them runs the same tools with `moola::cli::main_with(args)` / `reid::cli::main_with(args)`.
pub fn run_tool<C: clap::Parser>(
    args: Vec<String>,
    run: impl FnOnce(C) -> Result<()>,
) -> Result<()> {
    crate::alloc::retain_freed_memory();
    // Flags may follow the trailing `KEY VALUE` overrides, as yacs users write them.
    let args = hoist_flags(&C::command(), args);
    if let Some(flag) = unknown_flag(&C::command(), &args) {
        C::command()
            .error(
                clap::error::ErrorKind::UnknownArgument,
                format!(
                    "unexpected argument '{flag}' (not a flag of this command; `KEY VALUE` \
                     overrides never start with `--`)"
                ),
            )
            .exit();
    }
    let cli = C::parse_from(args);
    // burn-collective logs every tensor transfer at INFO: keep it to warnings.
    crate::train::progress::init_logging(crate::dist::QUIET_LOGS);
    run(cli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Debug, Parser)]
    struct Tool {
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        Train {
            #[arg(long)]
            model: Option<String>,
            #[arg(long)]
            resume: bool,
            #[command(flatten)]
            overrides: Overrides,
        },
    }

    #[test]
    fn an_unknown_flag_among_the_overrides_is_found() {
        let words = |line: &str| -> Vec<String> {
            hoist_flags(
                &Tool::command(),
                line.split_whitespace().map(String::from).collect(),
            )
        };
        let cmd = Tool::command();
        assert_eq!(
            unknown_flag(&cmd, &words("tool train seed 3 --bogus 1")),
            Some("--bogus".into())
        );
        assert_eq!(
            unknown_flag(&cmd, &words("tool train seed 3 --resum=1")),
            Some("--resum=1".into())
        );
        assert_eq!(
            unknown_flag(&cmd, &words("tool train seed 3 --resume")),
            None
        );
        assert_eq!(unknown_flag(&cmd, &words("tool train seed -3")), None);
        assert_eq!(unknown_flag(&cmd, &words("tool train -- seed --x")), None);
    }

    fn parse(line: &str) -> Tool {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        Tool::try_parse_from(hoist_flags(&Tool::command(), args)).unwrap()
    }

    #[test]
    fn flags_after_overrides_are_flags() {
        let t = parse("tool train seed 7 --quiet n_epochs 0 --model lstm --precision=bf16-mixed");
        assert!(t.runtime.quiet);
        assert_eq!(
            t.runtime.precision,
            Some(crate::numerics::amp::Precision::Bf16Mixed)
        );
        let Cmd::Train {
            model,
            resume,
            overrides,
        } = t.command;
        assert_eq!(model.as_deref(), Some("lstm"));
        assert!(!resume);
        assert_eq!(overrides.opts, ["seed", "7", "n_epochs", "0"]);
        // Flags before the pairs, negative values and unknown `--words` stay as they were.
        let t = parse("tool --device cpu train --resume lr -1e-3 --not-a-flag x");
        let Cmd::Train {
            resume, overrides, ..
        } = t.command;
        assert!(resume);
        assert_eq!(overrides.opts, ["lr", "-1e-3", "--not-a-flag", "x"]);
    }
}
