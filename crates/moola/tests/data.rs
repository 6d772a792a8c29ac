//! moola's data layer: parquet contract, UCR `.ts`, OHLC CSV windows, labels, expansions, ingest,
//! and the bundled real datasets.
//!
//! Parquet fixtures under `tests/fixtures/data/` are written by pandas/pyarrow
//! (`tools/data/make_fixtures.py`); their values follow formulas recomputed here. The `.ts` and
//! CSV fixtures are hand-written.

use std::path::{Path, PathBuf};

use moola::data::{
    FeatureLayout, LabelMap, OhlcOptions, TsOptions, VariableLength, WindowSet, flat_shape, ingest,
    read_any, read_parquet, read_ts, validate_expansions, windows_from_ohlc_csv, write_parquet,
};
use moola::model::InnerWindow;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn dataset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets")
        .join(name)
}

/// The full error chain of a failed call.
fn err_text<T: std::fmt::Debug>(result: anyhow::Result<T>) -> String {
    format!("{:#}", result.expect_err("expected an error"))
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} not in error: {text}");
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Value at (row, step, feature) of a set.
fn at(set: &WindowSet, row: usize, t: usize, f: usize) -> f32 {
    set.sample(row)[t * set.n_features + f]
}

fn sample_set(n: usize, seq_len: usize, n_features: usize) -> WindowSet {
    let x = (0..n * seq_len * n_features)
        .map(|k| (k as f32) * 0.1 - 3.7)
        .collect();
    let ids = (0..n).map(|i| format!("w{i}")).collect();
    let labels = (0..n)
        .map(|i| ["up", "down", "flat"][i % 3].to_string())
        .collect();
    let expansion = (0..n)
        .map(|i| (i % 2 == 0).then_some((30 + i as i64, 40 + i as i64)))
        .collect();
    WindowSet::new(ids, x, seq_len, n_features, Some(labels), Some(expansion)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// WindowSet and LabelMap

#[test]
fn window_set_accessors_and_select() {
    let set = sample_set(4, 3, 2);
    assert_eq!(set.len(), 4);
    assert!(!set.is_empty());
    assert_eq!(set.sample(2), &set.x[12..18]);
    let sub = set.select(&[3, 1, 3]);
    assert_eq!(sub.ids, strings(&["w3", "w1", "w3"]));
    assert_eq!(sub.sample(0), set.sample(3));
    assert_eq!(sub.sample(1), set.sample(1));
    assert_eq!(
        sub.labels.as_deref().unwrap(),
        strings(&["up", "down", "up"])
    );
    assert_eq!(sub.expansion.as_deref().unwrap(), &[None, None, None]);
    assert_eq!(set.select(&[0]).expansion.unwrap(), vec![Some((30, 40))]);
    assert!(set.select(&[]).is_empty());
    assert!(WindowSet::new(strings(&["a"]), vec![0.0; 5], 3, 2, None, None).is_err());
    assert!(WindowSet::new(strings(&["a"]), vec![0.0; 6], 3, 2, Some(vec![]), None).is_err());
}

#[test]
fn check_finite_names_window_step_and_feature() {
    let mut set = sample_set(3, 4, 2);
    set.check_finite().unwrap();
    set.x[8 + 2 * 2 + 1] = f32::INFINITY; // row 1, step 2, feature 1
    set.x[20] = f32::NAN;
    let text = err_text(set.check_finite());
    assert_contains(
        &text,
        &[
            "\"w1\"",
            "row 1",
            "time step 2",
            "feature 1",
            "2 non-finite",
        ],
    );
}

#[test]
fn require_labels() {
    let mut set = sample_set(2, 1, 1);
    assert_eq!(set.require_labels().unwrap(), strings(&["up", "down"]));
    set.labels = None;
    assert_contains(&err_text(set.require_labels()), &["no labels"]);
}

#[test]
fn label_map_sorts_like_np_unique() {
    // np.unique(["reversal", "consolidation", "Zeta", "retracement", "consolidation", "éa", "b"])
    // -> ['Zeta' 'b' 'consolidation' 'retracement' 'reversal' 'éa'] (code-point order).
    let labels = strings(&[
        "reversal",
        "consolidation",
        "Zeta",
        "retracement",
        "consolidation",
        "éa",
        "b",
    ]);
    let map = LabelMap::fit(&labels);
    assert_eq!(
        map.classes(),
        strings(&[
            "Zeta",
            "b",
            "consolidation",
            "retracement",
            "reversal",
            "éa"
        ])
    );
    assert_eq!(map.len(), 6);
    assert_eq!(map.index("consolidation"), Some(2));
    assert_eq!(map.index("missing"), None);
    assert_eq!(map.label(5), Some("éa"));
    assert_eq!(map.encode(&labels).unwrap(), vec![4, 2, 0, 3, 2, 5, 1]);
    // Numeric-looking labels sort as strings, like np.unique on a string array.
    assert_eq!(
        LabelMap::fit(&strings(&["2", "10", "1"])).classes(),
        strings(&["1", "10", "2"])
    );

    let text = err_text(map.encode(&strings(&["b", "Zeta", "zzz"])));
    assert_contains(&text, &["\"zzz\"", "row 2"]);

    assert_eq!(
        LabelMap::from_classes(strings(&["a", "b"])).unwrap(),
        LabelMap::fit(&strings(&["b", "a", "b"]))
    );
    assert_contains(
        &err_text(LabelMap::from_classes(strings(&["b", "a"]))),
        &["sorted", "\"b\"", "\"a\""],
    );
    assert!(LabelMap::from_classes(strings(&["a", "a"])).is_err());
}

// ---------------------------------------------------------------------------------------------
// validate_expansions

#[test]
fn validate_expansions_edges() {
    let cases: [(Option<(i64, i64)>, bool); 10] = [
        (Some((30, 74)), true), // both bounds inclusive
        (Some((30, 31)), true),
        (Some((73, 74)), true),
        (Some((29, 40)), false), // start before the window
        (Some((30, 75)), false), // end past bar 74
        (Some((40, 40)), false), // start == end
        (Some((50, 40)), false), // start > end
        (None, false),
        (Some((-1, 40)), false),
        (Some((45, 60)), true),
    ];
    let n = cases.len();
    let set = WindowSet::new(
        (0..n).map(|i| format!("r{i}")).collect(),
        (0..n * 105).map(|v| v as f32).collect(),
        105,
        1,
        Some((0..n).map(|i| format!("c{}", i % 2)).collect()),
        Some(cases.iter().map(|c| c.0).collect()),
    )
    .unwrap();
    let (kept, dropped) = validate_expansions(&set, InnerWindow::REFERENCE).unwrap();
    let want: Vec<usize> = (0..n).filter(|&i| cases[i].1).collect();
    assert_eq!(dropped, n - want.len());
    assert_eq!(dropped, 6);
    assert_eq!(kept, set.select(&want));

    // A custom window moves the bounds.
    let (kept, _) = validate_expansions(&set, InnerWindow { start: 40, end: 61 }).unwrap();
    assert_eq!(kept.ids, strings(&["r9"]));

    let mut bare = set.clone();
    bare.expansion = None;
    assert_contains(
        &err_text(validate_expansions(&bare, InnerWindow::REFERENCE)),
        &["expansion_start"],
    );
    let short = set.select(&[0]);
    let short = WindowSet::new(short.ids, vec![0.0; 50], 50, 1, None, short.expansion).unwrap();
    assert_contains(
        &err_text(validate_expansions(&short, InnerWindow::REFERENCE)),
        &["30..75", "50 steps"],
    );
}

// ---------------------------------------------------------------------------------------------
// Parquet

#[test]
fn parquet_round_trips_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let set = sample_set(5, 105, 4);
    for layout in [FeatureLayout::Nested, FeatureLayout::Flat] {
        let path = dir.path().join(format!("sub/{layout:?}.parquet"));
        write_parquet(&set, &path, layout).unwrap();
        assert_eq!(read_parquet(&path).unwrap(), set, "{layout:?}");
    }
    // Unlabeled, no expansions, non-OHLC shape (nested only).
    let mut bare = sample_set(3, 7, 3);
    bare.labels = None;
    bare.expansion = None;
    let path = dir.path().join("bare.parquet");
    write_parquet(&bare, &path, FeatureLayout::Nested).unwrap();
    assert_eq!(read_parquet(&path).unwrap(), bare);
    // One step of 5 values survives the flat rule ([1, D] when D % 4 != 0).
    let single = sample_set(2, 1, 5);
    let path = dir.path().join("single.parquet");
    write_parquet(&single, &path, FeatureLayout::Flat).unwrap();
    assert_eq!(read_parquet(&path).unwrap(), single);
    // 100 × 6 flat would read back as 150 × 4: refused, nothing written.
    let path = dir.path().join("refused.parquet");
    let text = err_text(write_parquet(
        &sample_set(2, 100, 6),
        &path,
        FeatureLayout::Flat,
    ));
    assert_contains(&text, &["refused.parquet", "flat layout", "(150, 4)"]);
    assert!(!path.exists());
    // Only the finished files are left (atomic writes clean their temporary files).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, strings(&["bare.parquet", "single.parquet", "sub"]));
}

#[test]
fn flat_rule_is_timestep_major() {
    assert_eq!(flat_shape(420), (105, 4));
    assert_eq!(flat_shape(8), (2, 4));
    assert_eq!(flat_shape(10), (1, 10));
    assert_eq!(flat_shape(3), (1, 3));
}

#[test]
fn reads_pandas_nested_fixture() {
    let set = read_parquet(&fixture("pandas_nested.parquet")).unwrap();
    assert_eq!(set.ids, strings(&["101", "102", "103"]));
    assert_eq!(
        set.labels.as_deref().unwrap(),
        strings(&["retracement", "consolidation", "retracement"])
    );
    assert_eq!((set.seq_len, set.n_features), (105, 4));
    for r in 0..3 {
        for t in 0..105 {
            for f in 0..4 {
                let want = 1000.0 * r as f32 + t as f32 + f as f32 / 4.0;
                assert_eq!(at(&set, r, t, f), want, "row {r} t {t} f {f}");
            }
        }
    }
    assert_eq!(
        set.expansion.as_deref().unwrap(),
        &[Some((35, 40)), None, Some((30, 74))]
    );
}

#[test]
fn reads_pandas_flat420_fixture_timestep_major() {
    let set = read_parquet(&fixture("pandas_flat420.parquet")).unwrap();
    assert_eq!(set.ids, strings(&["a", "b", "c", "d"]));
    assert_eq!((set.seq_len, set.n_features), (105, 4));
    for r in 0..4 {
        for t in 0..105 {
            for f in 0..4 {
                assert_eq!(at(&set, r, t, f), (10000 * r + 10 * t + f) as f32);
            }
        }
    }
    // Dictionary-encoded (pandas categorical) labels come back as strings.
    let labels = set.require_labels().unwrap();
    assert_eq!(
        labels,
        strings(&["reversal", "consolidation", "Zeta", "retracement"])
    );
    let map = LabelMap::fit(labels);
    assert_eq!(
        map.classes(),
        strings(&["Zeta", "consolidation", "retracement", "reversal"])
    );
    assert_eq!(map.encode(labels).unwrap(), vec![3, 1, 0, 2]);
    assert!(set.expansion.is_none());
}

#[test]
fn reads_pandas_column_features_fallback() {
    let set = read_parquet(&fixture("pandas_columns.parquet")).unwrap();
    assert_eq!(set.ids, strings(&["r0", "r1"]));
    assert!(set.labels.is_none());
    // f0..f9 only: not the string column, not the pandas index; 10 % 4 != 0 -> [1, 10].
    assert_eq!((set.seq_len, set.n_features), (1, 10));
    for r in 0..2 {
        for j in 0..10 {
            assert_eq!(at(&set, r, 0, j), (100 * r + j) as f32);
        }
    }
}

#[test]
fn parquet_error_paths_name_file_and_row() {
    let cases: [(&str, &[&str]); 8] = [
        (
            "no_window_id.parquet",
            &["no_window_id.parquet", "no `window_id` column"],
        ),
        (
            "ragged.parquet",
            &[
                "ragged.parquet",
                "row 2",
                "\"w2\"",
                "ragged",
                "2 time steps",
                "3 × 2",
            ],
        ),
        (
            "null_value.parquet",
            &[
                "null_value.parquet",
                "row 1",
                "\"w1\"",
                "time step 1, feature 0 is null",
            ],
        ),
        (
            "features_string.parquet",
            &["features_string.parquet", "`features` has type Utf8"],
        ),
        (
            "binary_features.parquet",
            &["binary_features.parquet", "pickled", "not supported"],
        ),
        (
            "only_start.parquet",
            &["only_start.parquet", "no `expansion_end` column"],
        ),
        (
            "fractional_expansion.parquet",
            &[
                "fractional_expansion.parquet",
                "row 1",
                "\"w1\"",
                "0.5 is not an integer",
            ],
        ),
        (
            "does_not_exist.parquet",
            &["does_not_exist.parquet", "cannot open"],
        ),
    ];
    for (name, parts) in cases {
        assert_contains(&err_text(read_parquet(&fixture(name))), parts);
    }
    // A codec this build does not decode gets a clear message.
    assert_contains(
        &err_text(read_parquet(&fixture("zstd.parquet"))),
        &["zstd.parquet", "`window_id`", "ZSTD", "snappy"],
    );
    // Not a parquet file at all.
    assert_contains(
        &err_text(read_parquet(&fixture("tiny_ohlc.csv"))),
        &["tiny_ohlc.csv", "not a readable parquet file"],
    );
}

// ---------------------------------------------------------------------------------------------
// UCR .ts

#[test]
fn reads_hand_written_multivariate_ts() {
    let set = read_ts(&fixture("tiny.ts"), &TsOptions::default()).unwrap();
    assert_eq!(set.ids, strings(&["0", "1", "2"]));
    assert_eq!(set.labels.as_deref().unwrap(), strings(&["b", "a", "b"]));
    assert_eq!((set.seq_len, set.n_features), (4, 2));
    assert!(set.expansion.is_none());
    // Time-major: step t holds [dim0[t], dim1[t]].
    assert_eq!(set.sample(0), &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]);
    assert_eq!(at(&set, 1, 0, 0), -1.5);
    assert_eq!(at(&set, 1, 3, 1), 1.0);
    assert!(at(&set, 1, 2, 1).is_nan(), "`?` reads as NaN");
    assert_eq!(
        set.sample(2),
        &[1000.0, 5.0, 2000.0, 6.0, 3000.0, 7.0, 4000.0, 8.0]
    );
    assert_contains(
        &err_text(set.check_finite()),
        &["\"1\"", "time step 2", "feature 1"],
    );
    // The CLI reader refuses the missing value and names the file.
    assert_contains(
        &err_text(read_any(&fixture("tiny.ts"))),
        &["tiny.ts", "not finite", "time step 2"],
    );
}

#[test]
fn variable_length_ts_rejected_or_padded() {
    let path = fixture("variable_length.ts");
    let text = err_text(read_ts(&path, &TsOptions::default()));
    assert_contains(
        &text,
        &[
            "variable_length.ts",
            "line 9 (row 1)",
            "5 values",
            "row 0 has 3",
            "PadLast",
        ],
    );

    let last = read_ts(
        &path,
        &TsOptions {
            variable_length: VariableLength::PadLast,
        },
    )
    .unwrap();
    assert_eq!((last.seq_len, last.n_features), (5, 1));
    assert_eq!(
        last.x,
        [
            1.0, 2.0, 3.0, 3.0, 3.0, //
            4.0, 5.0, 6.0, 7.0, 8.0, //
            9.0, 10.0, 11.0, 12.0, 12.0,
        ]
    );
    assert_eq!(last.labels.as_deref().unwrap(), strings(&["x", "y", "x"]));

    let zero = read_ts(
        &path,
        &TsOptions {
            variable_length: VariableLength::PadZero,
        },
    )
    .unwrap();
    assert_eq!(
        zero.x,
        [
            1.0, 2.0, 3.0, 0.0, 0.0, //
            4.0, 5.0, 6.0, 7.0, 8.0, //
            9.0, 10.0, 11.0, 12.0, 0.0,
        ]
    );
}

#[test]
fn ts_error_paths_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let header = "@problemName T\n@univariate false\n@dimensions 2\n@classLabel true a b\n@data\n";
    let cases: [(&str, &[&str]); 7] = [
        // Line 7 (row 1) has a bad token in dimension 1.
        (
            "1,2:3,4:a\n1,2:3,x4:b\n",
            &["line 7 (row 1)", "dimension 1, value 1", "\"x4\""],
        ),
        ("1,2:3,4:c\n", &["line 6 (row 0)", "\"c\"", "not declared"]),
        (
            "1,2:a\n",
            &["line 6 (row 0)", "1 dimension(s)", "declares 2"],
        ),
        ("1,2:3,4\n", &["line 6 (row 0)", "\"3,4\" is not declared"]),
        ("", &["no data rows"]),
        (
            "1,2:3:a\n",
            &["line 6 (row 0)", "dimension 1 has 1 values but row 0 has 2"],
        ),
        (
            "1,,2:3,4,5:a\n",
            &["line 6 (row 0)", "dimension 0, value 1", "\"\""],
        ),
    ];
    for (i, (body, parts)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.ts"));
        std::fs::write(&path, format!("{header}{body}")).unwrap();
        let text = err_text(read_ts(&path, &TsOptions::default()));
        assert_contains(&text, &[&format!("bad{i}.ts")]);
        assert_contains(&text, parts);
    }
    let other: [(&str, &[&str]); 5] = [
        (
            "@problemName T\n1,2:a\n",
            &["line 2", "expected an @ header line"],
        ),
        ("@problemName T\n@classLabel true a\n", &["no @data line"]),
        (
            "@timeStamps true\n@data\n",
            &["line 1", "@timeStamps true", "not supported"],
        ),
        (
            "@targetLabel true\n@data\n",
            &["line 1", "regression", "not supported"],
        ),
        (
            "@equalLength true\n@seriesLength 3\n@data\n1,2\n3,4\n",
            &["@seriesLength declares 3", "has 2"],
        ),
    ];
    for (i, (body, parts)) in other.iter().enumerate() {
        let path = dir.path().join(format!("other{i}.ts"));
        std::fs::write(&path, body).unwrap();
        let text = err_text(read_ts(&path, &TsOptions::default()));
        assert_contains(&text, &[&format!("other{i}.ts")]);
        assert_contains(&text, parts);
    }
    // Unlabeled files read without labels.
    let path = dir.path().join("unlabeled.ts");
    std::fs::write(&path, "@classLabel false\n@data\n1,2,3\n4,5,6\n").unwrap();
    let set = read_ts(&path, &TsOptions::default()).unwrap();
    assert!(set.labels.is_none());
    assert_eq!((set.len(), set.seq_len, set.n_features), (2, 3, 1));
    assert_contains(
        &err_text(read_ts(
            &dir.path().join("missing.ts"),
            &TsOptions::default(),
        )),
        &["missing.ts", "cannot read"],
    );
}

#[test]
fn reads_shipped_ucr_sets() {
    for split in ["TRAIN", "TEST"] {
        let set = read_ts(
            &dataset(&format!("BasicMotions/BasicMotions_{split}.ts")),
            &TsOptions::default(),
        )
        .unwrap();
        assert_eq!((set.len(), set.seq_len, set.n_features), (40, 100, 6));
        set.check_finite().unwrap();
        let labels = set.require_labels().unwrap();
        let map = LabelMap::fit(labels);
        assert_eq!(
            map.classes(),
            strings(&["Badminton", "Running", "Standing", "Walking"])
        );
        for class in map.classes() {
            assert_eq!(labels.iter().filter(|l| *l == class).count(), 10);
        }
    }
    // First values of the first training case (dimension 0, steps 0..3, from the file).
    let train = read_any(&dataset("BasicMotions/BasicMotions_TRAIN.ts")).unwrap();
    let dim0: Vec<f32> = (0..3).map(|t| at(&train, 0, t, 0)).collect();
    assert_eq!(dim0, [0.079106, 0.079106, -0.903497]);

    for (split, n, counts) in [("TRAIN", 67, [34, 33]), ("TEST", 1029, [513, 516])] {
        let set = read_any(&dataset(&format!(
            "ItalyPowerDemand/ItalyPowerDemand_{split}.ts"
        )))
        .unwrap();
        assert_eq!((set.len(), set.seq_len, set.n_features), (n, 24, 1));
        let labels = set.require_labels().unwrap();
        for (class, count) in ["1", "2"].iter().zip(counts) {
            assert_eq!(labels.iter().filter(|l| l == class).count(), count);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OHLC CSV

#[test]
fn ohlc_windows_per_symbol() {
    let opts = OhlcOptions {
        window: 3,
        stride: 2,
        symbol: None,
    };
    let set = windows_from_ohlc_csv(&fixture("tiny_ohlc.csv"), &opts).unwrap();
    // AAA has 7 bars -> starts 0, 2, 4; BBB has 5 -> 0, 2; CCC has 1 bar -> none.
    assert_eq!(
        set.ids,
        strings(&[
            "AAA:2020-01-01",
            "AAA:2020-01-03",
            "AAA:2020-01-07",
            "BBB:2020-01-01",
            "BBB:2020-01-03",
        ])
    );
    assert_eq!((set.seq_len, set.n_features), (3, 4));
    assert!(set.labels.is_none() && set.expansion.is_none());
    let bar = |base: f32, k: usize| {
        let o = base + k as f32;
        [o, o + 0.5, o - 0.5, o + 0.25]
    };
    let starts = [(1.0, 0), (1.0, 2), (1.0, 4), (101.0, 0), (101.0, 2)];
    for (row, (base, start)) in starts.into_iter().enumerate() {
        let want: Vec<f32> = (start..start + 3).flat_map(|k| bar(base, k)).collect();
        assert_eq!(set.sample(row), want.as_slice(), "window {row}");
    }

    // Every window (stride 1) of one symbol.
    let only = windows_from_ohlc_csv(
        &fixture("tiny_ohlc.csv"),
        &OhlcOptions {
            window: 3,
            stride: 1,
            symbol: Some("BBB".into()),
        },
    )
    .unwrap();
    assert_eq!(
        only.ids,
        strings(&["BBB:2020-01-01", "BBB:2020-01-02", "BBB:2020-01-03"])
    );
    let want: Vec<f32> = (1..4).flat_map(|k| bar(101.0, k)).collect();
    assert_eq!(only.sample(1), want.as_slice());
}

#[test]
fn ohlc_error_paths() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OhlcOptions {
        window: 2,
        stride: 1,
        symbol: None,
    };
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let no_close = write("no_close.csv", "date,open,high,low\n2020-01-01,1,2,0\n");
    assert_contains(
        &err_text(windows_from_ohlc_csv(&no_close, &opts)),
        &["no_close.csv", "no `close` column", "date, open, high, low"],
    );
    let bad = write(
        "bad.csv",
        "date,open,high,low,close\n2020-01-01,1,2,0,1\n2020-01-02,1,n/a,0,1\n",
    );
    assert_contains(
        &err_text(windows_from_ohlc_csv(&bad, &opts)),
        &["bad.csv", "line 3", "`high`", "\"n/a\""],
    );
    // No symbol column: the file stem is the symbol; no date column: bar index.
    let plain = write(
        "plain.csv",
        "Open,High,Low,Close\n1,2,0,1\n2,3,1,2\n3,4,2,3\n",
    );
    let set = windows_from_ohlc_csv(&plain, &opts).unwrap();
    assert_eq!(set.ids, strings(&["plain:0", "plain:1"]));
    assert_contains(
        &err_text(windows_from_ohlc_csv(
            &plain,
            &OhlcOptions {
                window: 5,
                ..opts.clone()
            },
        )),
        &["plain.csv", "5 bars", "longest: 3"],
    );
    assert_contains(
        &err_text(windows_from_ohlc_csv(
            &fixture("tiny_ohlc.csv"),
            &OhlcOptions {
                symbol: Some("ZZZ".into()),
                ..opts.clone()
            },
        )),
        &["tiny_ohlc.csv", "\"ZZZ\""],
    );
    assert_contains(
        &err_text(windows_from_ohlc_csv(&dir.path().join("absent.csv"), &opts)),
        &["absent.csv"],
    );
}

// ---------------------------------------------------------------------------------------------
// read_any and ingest

#[test]
fn read_any_dispatches_and_reports() {
    let missing = fixture("nope.parquet");
    assert_contains(
        &err_text(read_any(&missing)),
        &["nope.parquet", "does not exist"],
    );
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("data.json");
    std::fs::write(&odd, "{}").unwrap();
    assert_contains(
        &err_text(read_any(&odd)),
        &["data.json", "unsupported", ".parquet"],
    );
    let set = read_any(&fixture("pandas_nested.parquet")).unwrap();
    assert_eq!(set.len(), 3);
    // .csv goes to the OHLC reader with 105-bar windows: the fixture is too short.
    assert_contains(
        &err_text(read_any(&fixture("tiny_ohlc.csv"))),
        &["tiny_ohlc.csv", "105 bars"],
    );
}

#[test]
fn ingest_validates_and_writes_canonical_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("processed/train.parquet");
    let input = fixture("pandas_nested.parquet");
    let summary = ingest(&input, &out).unwrap();
    assert_eq!(summary.rows, 3);
    assert_eq!((summary.seq_len, summary.n_features), (105, 4));
    assert_eq!(
        summary.classes,
        Some(vec![
            ("consolidation".to_string(), 1),
            ("retracement".to_string(), 2)
        ])
    );
    assert_eq!(summary.with_expansion, Some(2));
    assert_eq!(summary.valid_expansion, Some(2));
    let shown = summary.to_string();
    assert_contains(
        &shown,
        &[
            "rows: 3",
            "105 × 4",
            "0=consolidation (1)",
            "1=retracement (2)",
            "2 pass",
        ],
    );
    assert_eq!(read_parquet(&out).unwrap(), read_parquet(&input).unwrap());

    // A .ts input becomes a nested parquet with its own shape.
    let out_ts = dir.path().join("bm.parquet");
    let summary = ingest(&dataset("BasicMotions/BasicMotions_TEST.ts"), &out_ts).unwrap();
    assert_eq!(
        (summary.rows, summary.seq_len, summary.n_features),
        (40, 100, 6)
    );
    assert_eq!(summary.with_expansion, None);
    assert_eq!(
        read_parquet(&out_ts).unwrap(),
        read_any(&dataset("BasicMotions/BasicMotions_TEST.ts")).unwrap()
    );

    // Missing values and duplicate ids are refused; nothing is written.
    let refused = dir.path().join("refused.parquet");
    assert_contains(
        &err_text(ingest(&fixture("tiny.ts"), &refused)),
        &["tiny.ts", "not finite"],
    );
    let dup_in = dir.path().join("dup.parquet");
    let mut dup = sample_set(3, 2, 4);
    dup.ids[2] = "w0".into();
    write_parquet(&dup, &dup_in, FeatureLayout::Nested).unwrap();
    assert_contains(
        &err_text(ingest(&dup_in, &refused)),
        &["dup.parquet", "\"w0\"", "rows 0 and 2"],
    );
    assert!(!refused.exists());
}

// ---------------------------------------------------------------------------------------------
// The bundled labelled OHLC windows

#[test]
fn shipped_ohlc_windows_follow_their_documented_rule() {
    let set = read_any(&dataset("ohlc/windows.parquet")).unwrap();
    assert_eq!((set.len(), set.seq_len, set.n_features), (453, 105, 4));
    let labels = set.require_labels().unwrap();
    let map = LabelMap::fit(labels);
    assert_eq!(map.classes(), strings(&["down", "up"]));
    let ups = labels.iter().filter(|l| *l == "up").count();
    assert_eq!((set.len() - ups, ups), (200, 253));

    let (kept, dropped) = validate_expansions(&set, InnerWindow::REFERENCE).unwrap();
    assert_eq!((kept.len(), dropped), (453, 0));

    // The windows are exactly the CSV's bars at the same ids (stride 25 over each ticker).
    let all = windows_from_ohlc_csv(
        &dataset("ohlc/stocks_daily.csv"),
        &OhlcOptions {
            window: 105,
            stride: 25,
            symbol: None,
        },
    )
    .unwrap();
    assert_eq!(all.len(), 467, "453 kept + 13 across splits + 1 flat");
    let mut next = 0;
    for (row, id) in set.ids.iter().enumerate() {
        let pos = all.ids[next..]
            .iter()
            .position(|a| a == id)
            .unwrap_or_else(|| panic!("window {id} not among the CSV windows (in order)"))
            + next;
        assert_eq!(set.sample(row), all.sample(pos), "window {id}");
        next = pos + 1;

        // Label: sign of close[74] - close[30]; expansion: the largest move that way.
        let close: Vec<f64> = (0..105).map(|t| at(&set, row, t, 3) as f64).collect();
        let up = close[74] > close[30];
        assert_eq!(labels[row], if up { "up" } else { "down" }, "window {id}");
        let (s, e) = set.expansion.as_ref().unwrap()[row].unwrap();
        let sign = if up { 1.0 } else { -1.0 };
        let best = (30..75)
            .flat_map(|i| (i + 1..75).map(move |j| (i, j)))
            .map(|(i, j)| sign * (close[j] - close[i]))
            .fold(f64::MIN, f64::max);
        let got = sign * (close[e as usize] - close[s as usize]);
        assert!(
            (got - best).abs() <= 1e-3 * best.abs().max(1.0),
            "window {id}: expansion {s}..{e} moves {got}, the largest move is {best}"
        );
    }
}
