//! Train a moola classifier on a UCR/UEA data set, save it, load it back and predict.
//! Usage: `cargo run --release -- path/to/BasicMotions` (a folder with `<Name>_TRAIN.ts` and
//! `<Name>_TEST.ts`, sktime's format; the checkout bundles three data sets under `datasets/`).

use anyhow::{Context, Result};
use kiln::backend::{Autodiff, CpuBackend};
use kiln::metrics::ClassificationReport;
use moola::Classifier;
use moola::data::read_any;
use moola::model::ModelSpec;
use moola::train::TrainConfig;

type B = Autodiff<CpuBackend>; // kiln's CPU backend (burn-flex with kiln's patches), with autodiff

fn main() -> Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).context("give a data-set folder")?);
    let name = dir.file_name().context("a folder name")?.to_string_lossy();
    let train = read_any(&dir.join(format!("{name}_TRAIN.ts")))?;
    let test = read_any(&dir.join(format!("{name}_TEST.ts")))?;

    // The reference's SimpleLSTM and recipe, with fewer epochs and a smaller batch for a quick run.
    let spec = ModelSpec::from_name("simple_lstm")?;
    let recipe = TrainConfig {
        n_epochs: 30,
        batch_size: 8,
        ..TrainConfig::for_model("simple_lstm")
    };
    let mut clf = Classifier::<B>::new(spec, recipe.clone(), Default::default()).with_seed(7);
    clf.fit(&train)?;

    clf.save("simple_lstm".as_ref())?; // simple_lstm.mpk + its model card
    let loaded = Classifier::<B>::load("simple_lstm".as_ref(), recipe, Default::default())?;
    let y = loaded.labels()?.encode(test.require_labels()?)?;
    let report = ClassificationReport::from_probabilities(&y, &loaded.predict_proba(&test)?)?;
    println!("{name} test: {}", report.summary());
    Ok(())
}
