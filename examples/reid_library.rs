//! reid as a library: a typed configuration, the `Learner`, the trained model and its
//! retrieval report (mAP / CMC without and with centroids). Uses the public API only.
//!
//! ```text
//! cargo run --release --example reid_library
//! ```

use anyhow::Result;
use kiln::backend::Autodiff;
use kiln::backend::CpuBackend;
use reid::{Learner, ReidConfig, StepKind};

type B = Autodiff<CpuBackend>;

fn main() -> Result<()> {
    kiln::progress::init_logging("warn");
    // The bundled Fashion-MNIST retrieval set (classes as identities, Market1501 layout), a
    // small ResNet18 at 32×32, one epoch from scratch.
    let opts: Vec<String> = [
        ("MODEL.NAME", "resnet18"),
        ("MODEL.BACKBONE_EMB_SIZE", "512"),
        ("MODEL.PRETRAINED", "False"),
        ("DATASETS.ROOT_DIR", "datasets/fashion-mnist-reid"),
        ("INPUT.SIZE_TRAIN", "[32, 32]"),
        ("INPUT.SIZE_TEST", "[32, 32]"),
        ("INPUT.PADDING", "4"),
        ("SOLVER.IMS_PER_BATCH", "8"),
        ("SOLVER.BASE_LR", "1e-3"),
        ("SOLVER.MAX_EPOCHS", "1"),
        ("TEST.IMS_PER_BATCH", "128"),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    let cfg = ReidConfig::load(None, &opts)?;
    let trained = Learner::new(cfg)?
        .step(StepKind::Ctl)
        .seed(7)
        .fit::<B>(&Default::default())?;
    println!(
        "after {} epoch(s):\n{}",
        trained.report.epochs,
        trained.report.test.table()
    );
    let x = burn::tensor::Tensor::zeros([1, 3, 32, 32], &Default::default());
    println!("embedding size: {}", trained.model.embed(x).dims()[1]);
    Ok(())
}
