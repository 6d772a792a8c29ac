//! The `reid` command line. It mirrors the reference's scripts: every command takes
//! `--config-file <yml>` (also spelled `--config_file`) and trailing yacs `KEY VALUE` pairs.
//!
//! ```text
//! reid [--device cpu|cuda|wgpu] [--quiet] <command> --config-file configs/256_resnet50.yml [KEY VALUE ...]
//!   train              train_ctl_model.py (default) or train_base_model.py (--model base)
//!   test               the TEST.ONLY_TEST flow on MODEL.PRETRAIN_PATH (own or reference .ckpt)
//!   create-embeddings  inference/create_embeddings.py: embeddings.npy + paths.npy
//!   get-similar        inference/get_similar.py: top-k gallery matches per query image
//!   visrank            ranked-result pictures with green/red borders
//!   evaluate           mAP/CMC of precomputed query/gallery embeddings (.npy), three protocols
//!   convert-fashion-mnist   build the bundled Market1501-layout Fashion-MNIST set
//!   bench              one CTL training step and embedding throughput, next to PyTorch
//!   index              build or extend the ANN index of a saved gallery
//!   bench-search       the ANN index against exact search on a synthetic gallery
//!   plot               training curves of run directories side by side → PNG
//!   doctor             compiled backends, CUDA driver, wgpu adapters, CPU threads
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::ReidConfig;
use crate::tools;

/// reid: person re-identification and fashion retrieval with centroids, on Burn.
#[derive(Debug, Parser)]
#[command(name = "reid", version, about)]
pub struct Cli {
    /// Device and progress options.
    #[command(flatten)]
    pub runtime: kiln::cli::RuntimeArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The training step (`ctl` or `base`), from the domain module.
pub use crate::train::StepKind;
/// The configuration arguments every command takes: `--config-file` (also `--config_file`) and
/// trailing yacs `KEY VALUE` pairs.
pub use kiln::cli::ConfigArgs as Common;

/// `reid train` arguments.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// ctl (default) or base.
    #[arg(long, value_enum, default_value = "ctl")]
    pub model: StepKind,
    /// Centroid mode B with the reference's camera-id bug (gallery cameras read from the
    /// query+gallery array with gallery indices) instead of the corrected one.
    #[arg(long)]
    pub camid_bug_compat: bool,
    /// Also evaluate the untrained model before training (mAP/R1 before vs after).
    #[arg(long)]
    pub eval_before: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `reid test` arguments.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Centroid mode B with the reference's camera-id bug (gallery cameras read from the
    /// query+gallery array with gallery indices) instead of the corrected one.
    #[arg(long)]
    pub camid_bug_compat: bool,
    #[command(flatten)]
    pub common: Common,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the CTL model (or the base model) and test it with and without centroids.
    /// `train_ctl_model` and `train_base_model` (`train --model base`) are the reference's
    /// script names.
    #[command(visible_alias = "train_ctl_model")]
    Train(TrainArgs),
    /// Evaluate MODEL.PRETRAIN_PATH (TEST.ONLY_TEST flow): configured USE_CENTROIDS, then flipped.
    Test(TestArgs),
    /// Embed a directory of images (embeddings.npy, paths.npy).
    #[command(visible_alias = "create_embeddings")]
    CreateEmbeddings(tools::CreateEmbeddingsArgs),
    /// Find the top-k most similar gallery images of each query image.
    #[command(visible_alias = "get_similar")]
    GetSimilar(tools::GetSimilarArgs),
    /// Draw ranked results (query + top-k, green/red borders).
    Visrank(tools::VisrankArgs),
    /// mAP/CMC of precomputed query/gallery embeddings and ids (.npy).
    Evaluate(tools::EvaluateArgs),
    /// Convert the Debian dataset-fashion-mnist files into the bundled retrieval set.
    ConvertFashionMnist(ConvertArgs),
    /// Time one CTL training step and embedding throughput, next to PyTorch.
    Bench(crate::bench::BenchArgs),
    /// The devices this binary can use: compiled backends, CUDA driver, wgpu adapters.
    Doctor,
    /// Build (or extend) the ANN index of a saved gallery (index.usearch beside embeddings.npy).
    Index(tools::IndexArgs),
    /// The ANN index against exact search on a synthetic clustered gallery.
    BenchSearch(crate::search::bench::BenchSearchArgs),
    /// Draw the training curves of one or more run directories (their metrics.csv) side by
    /// side into one PNG.
    Plot(PlotArgs),
}

/// `reid plot` arguments.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories (`version_N/` of `reid train`, each with its metrics.csv).
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "curves.png")]
    pub out: PathBuf,
    /// The monitored metric whose best epoch is marked (default: SOLVER.MONITOR_METRIC_NAME of
    /// the first run's config.yaml, else mAP).
    #[arg(long)]
    pub monitor: Option<String>,
    /// Its direction (default: SOLVER.MONITOR_METRIC_MODE of that config.yaml, else max).
    #[arg(long)]
    pub mode: Option<kiln::Mode>,
}

/// `reid convert-fashion-mnist` arguments.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Directory holding the Fashion-MNIST idx files (from the Debian package).
    #[arg(long)]
    pub src: PathBuf,
    /// Output root (gets `market1501/...`).
    #[arg(long)]
    pub out: PathBuf,
}

/// `reid plot`: the monitored metric from the flags, else from the first run's config.yaml.
fn plot(a: PlotArgs) -> Result<()> {
    let saved = a
        .runs
        .first()
        .map(|d| d.join("config.yaml"))
        .filter(|p| p.is_file())
        .map(|p| ReidConfig::load(Some(&p), &[]))
        .transpose()?;
    let solver = saved.map(|c| c.solver).unwrap_or_default();
    let monitor = a.monitor.unwrap_or(solver.monitor_metric_name);
    let mode = a.mode.unwrap_or(if solver.monitor_metric_mode == "min" {
        kiln::Mode::Min
    } else {
        kiln::Mode::Max
    });
    kiln::plot::plot_runs(&a.runs, Some((&monitor, mode)), &a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// The `reid` tool on `args` (the program name first), as the `reid` binary runs it: see
/// [`kiln::cli::run_tool`]. Returns the command's error; usage errors exit the process (status 2).
pub fn main_with(args: Vec<String>) -> Result<()> {
    kiln::cli::run_tool(script_names(args), run)
}

/// The reference's `train_base_model` script as `train --model base`, when it is the
/// subcommand word (the first word after the program that names a subcommand); the other script
/// names are subcommand aliases.
pub fn script_names(mut args: Vec<String>) -> Vec<String> {
    let command = Cli::command();
    let first = args.iter().skip(1).position(|a| {
        a == "train_base_model"
            || command
                .get_subcommands()
                .any(|s| s.get_name() == a || s.get_all_aliases().any(|n| n == a))
    });
    if let Some(i) = first.filter(|&i| args[i + 1] == "train_base_model") {
        args.splice(i + 1..i + 2, ["train", "--model", "base"].map(String::from));
    }
    args
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let progress = cli.runtime.progress();
    let device = cli.runtime.device;
    match cli.command {
        Command::Train(a) => {
            let cfg = ReidConfig::from_args(&a.common)?;
            let options = crate::train::FitOptions {
                bug_compat: a.camid_bug_compat,
                progress,
                evaluate_before: a.eval_before,
                run_dir: None,
                precision: cli.runtime.precision,
                dist: None,
                check_replicas: false,
                in_memory: false,
                virtual_ranks: cli.runtime.virtual_ranks,
            };
            let (devices, dist) = crate::train::parallel_layout(&cfg, &cli.runtime)?;
            crate::train::run_train_parallel(cfg, a.model, device, options, &devices, dist)
                .map(|_| ())
        }
        Command::Test(a) => crate::train::run_test(
            ReidConfig::from_args(&a.common)?,
            device,
            a.camid_bug_compat,
            progress,
        )
        .map(|_| ()),
        Command::CreateEmbeddings(a) => tools::create_embeddings(a, device, progress),
        Command::GetSimilar(a) => tools::get_similar(a, device, progress),
        Command::Visrank(a) => tools::visrank(a, device, progress),
        Command::Evaluate(a) => tools::evaluate(a),
        Command::Bench(a) => crate::bench::run(&a, device),
        Command::Doctor => {
            doctor(device);
            Ok(())
        }
        Command::Index(a) => tools::index(a, progress),
        Command::BenchSearch(a) => crate::search::bench::run(&a).map(|_| ()),
        Command::Plot(a) => plot(a),
        Command::ConvertFashionMnist(a) => {
            let summary = crate::data::convert_fashion_mnist(&a.src, &a.out, &Default::default())?;
            println!(
                "wrote {} classes: {} train / {} query / {} gallery images, {} bytes of JPEG",
                summary.classes, summary.train, summary.query, summary.gallery, summary.bytes
            );
            for source in &summary.sources {
                println!("source: {}", source.display());
            }
            println!("{}", crate::data::market1501(&a.out)?.summary());
            Ok(())
        }
    }
}

fn doctor(device: kiln::DeviceKind) {
    println!("reid {}", env!("CARGO_PKG_VERSION"));
    for line in kiln::backend::doctor_report(&device) {
        println!("{line}");
    }
}
