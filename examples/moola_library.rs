//! moola as a library: build a classifier, train it with a caller-supplied validation set,
//! evaluate, save, load and predict. Uses the public API only.
//!
//! ```text
//! cargo run --release --example moola_library
//! ```

use std::path::Path;

use anyhow::Result;
use kiln::backend::Autodiff;
use kiln::backend::CpuBackend;
use kiln::metrics::ClassificationReport;
use moola::Classifier;
use moola::data::read_any;
use moola::model::{ModelSpec, SimpleLstmConfig};
use moola::train::TrainConfig;

type B = Autodiff<CpuBackend>;

fn main() -> Result<()> {
    kiln::progress::init_logging("warn");
    // UCR ItalyPowerDemand (bundled): 67 training and 1029 test series of 24 hourly values.
    let dir = Path::new("datasets/ItalyPowerDemand");
    let train = read_any(&dir.join("ItalyPowerDemand_TRAIN.ts"))?;
    let test = read_any(&dir.join("ItalyPowerDemand_TEST.ts"))?;
    let (validation, test) = (
        test.select(&(0..200).collect::<Vec<_>>()),
        test.select(&(200..test.len()).collect::<Vec<_>>()),
    );

    let spec = ModelSpec::SimpleLstm(SimpleLstmConfig {
        hidden_size: 32,
        ..SimpleLstmConfig::default()
    });
    let recipe = TrainConfig {
        n_epochs: 30,
        batch_size: 16,
        ..TrainConfig::for_model("simple_lstm")
    };
    let mut clf = Classifier::<B>::new(spec, recipe.clone(), Default::default()).with_seed(7);
    let fit = clf.fit_with_validation(&train, &validation)?;
    println!(
        "trained {} epochs, best validation loss {:.4}",
        fit.epochs,
        fit.best_val_loss.unwrap_or(f64::NAN)
    );

    let y = clf.labels()?.encode(test.require_labels()?)?;
    let report = ClassificationReport::from_probabilities(&y, &clf.predict_proba(&test)?)?;
    println!("test ({} series): {}", test.len(), report.summary());

    let out = Path::new("artifacts/examples/moola_library");
    clf.save(&out.join("model"))?;
    let loaded = Classifier::<B>::load(&out.join("model"), recipe, Default::default())?;
    let first: Vec<String> = loaded.predict(&test)?.into_iter().take(5).collect();
    println!(
        "reloaded from {}: first predictions {first:?}",
        out.display()
    );
    Ok(())
}
