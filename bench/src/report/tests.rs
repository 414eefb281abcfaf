use std::time::Duration;

use super::*;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn strings(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|cell| cell.to_string()).collect()
}

fn sample() -> Report {
    let latencies = |scale: u64| {
        (1..=5000)
            .map(|i| Duration::from_micros(i * scale))
            .collect()
    };
    Report {
        title: "ollama-mesh benchmark".into(),
        preamble: "2 cores, one run.".into(),
        sections: vec![
            Section {
                heading: "Overhead".into(),
                text: "Small requests at increasing rates.".into(),
                tables: vec![Table {
                    columns: strings(&["system", "p50", "vs direct"]),
                    rows: vec![
                        strings(&["direct", "0.20 ms", "1.00×"]),
                        strings(&["router", "0.30 ms", "1.50×"]),
                    ],
                }],
                charts: vec![
                    Chart::LatencyCdf {
                        title: "Latency distribution".into(),
                        file_stem: "overhead-latency".into(),
                        series: vec![
                            ("direct".into(), latencies(1)),
                            ("router".into(), latencies(2)),
                            ("empty".into(), Vec::new()),
                        ],
                    },
                    Chart::Lines {
                        title: "Achieved vs offered rate".into(),
                        file_stem: "overhead-throughput".into(),
                        x_label: "offered (req/s)".into(),
                        y_label: "achieved (req/s)".into(),
                        series: vec![
                            ("direct".into(), vec![(100.0, 100.0), (1000.0, 990.0)]),
                            ("router".into(), vec![(100.0, 99.0), (1000.0, f64::NAN)]),
                        ],
                    },
                ],
            },
            Section {
                heading: "Streams".into(),
                text: String::new(),
                tables: Vec::new(),
                charts: vec![Chart::Bars {
                    title: "Stalled streams".into(),
                    file_stem: "streams_stalled".into(),
                    y_label: "streams".into(),
                    bars: vec![("direct".into(), 0.0), ("nginx".into(), 3.0)],
                }],
            },
        ],
    }
}

#[test]
fn write_produces_markdown_with_tables_and_valid_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let path = sample().write(&out).unwrap();

    assert_eq!(path, out.join("README.md"));
    let markdown = std::fs::read_to_string(&path).unwrap();
    for expected in [
        "# ollama-mesh benchmark\n\n2 cores, one run.\n\n## Overhead\n",
        "| system | p50 | vs direct |\n|---|---|---|\n| direct | 0.20 ms | 1.00× |\n",
        "| router | 0.30 ms | 1.50× |\n",
        "![Latency distribution](overhead-latency.png)",
        "![Achieved vs offered rate](overhead-throughput.png)",
        "## Streams\n\n![Stalled streams](streams_stalled.png)\n",
    ] {
        assert!(
            markdown.contains(expected),
            "{expected:?} not in:\n{markdown}"
        );
    }
    for stem in ["overhead-latency", "overhead-throughput", "streams_stalled"] {
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert_eq!(png[..8], PNG_SIGNATURE, "{stem}.png");
        assert!(png.len() > 5_000, "{stem}.png is only {} bytes", png.len());
    }
}

#[test]
fn charts_without_data_still_draw() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report {
        title: "empty".into(),
        sections: vec![Section {
            heading: "nothing measured".into(),
            charts: vec![
                Chart::LatencyCdf {
                    title: "no latencies".into(),
                    file_stem: "a".into(),
                    series: Vec::new(),
                },
                Chart::Lines {
                    title: "one point".into(),
                    file_stem: "b".into(),
                    x_label: "x".into(),
                    y_label: "y".into(),
                    series: vec![("s".into(), vec![(1.0, 1.0)])],
                },
                Chart::Bars {
                    title: "no bars".into(),
                    file_stem: "c".into(),
                    y_label: "y".into(),
                    bars: Vec::new(),
                },
            ],
            ..Section::default()
        }],
        ..Report::default()
    };
    report.write(dir.path()).unwrap();
    for stem in ["a", "b", "c"] {
        let png = std::fs::read(dir.path().join(format!("{stem}.png"))).unwrap();
        assert_eq!(png[..8], PNG_SIGNATURE);
    }
}

#[test]
fn bad_or_duplicate_file_stems_are_refused_before_writing() {
    let chart = |stem: &str| Chart::Bars {
        title: "t".into(),
        file_stem: stem.into(),
        y_label: "y".into(),
        bars: Vec::new(),
    };
    for charts in [
        vec![chart("../escape")],
        vec![chart("")],
        vec![chart(".hidden")],
        vec![chart("same"), chart("same")],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("results");
        let report = Report {
            sections: vec![Section {
                charts,
                ..Section::default()
            }],
            ..Report::default()
        };
        let error = report.write(&out).unwrap_err();
        assert!(matches!(error, ReportError::FileStem { .. }), "{error}");
        assert!(!out.exists());
    }
}

#[test]
fn table_cells_cannot_break_the_table() {
    let table = Table {
        columns: strings(&["a", "b"]),
        rows: vec![strings(&["x|y", "line\nbreak"]), strings(&["short"])],
    };
    assert_eq!(
        table.to_markdown(),
        "| a | b |\n|---|---|\n| x\\|y | line<br>break |\n| short |  |\n"
    );
}

#[test]
fn ratios() {
    assert_eq!(ratio(1.23, 1.0), "1.23×");
    assert_eq!(ratio(1.0, 3.0), "0.33×");
    assert_eq!(ratio(5.0, 0.0), "—");
    assert_eq!(ratio(5.0, f64::NAN), "—");
    assert_eq!(ratio(f64::INFINITY, 1.0), "—");
}

#[test]
fn durations_read_with_three_significant_digits() {
    let cases = [
        (Duration::from_micros(42), "0.042 ms"),
        (Duration::from_micros(420), "0.42 ms"),
        (Duration::from_micros(4200), "4.20 ms"),
        (Duration::from_micros(12_345), "12.3 ms"),
        (Duration::from_micros(123_456), "123 ms"),
        (Duration::from_millis(1250), "1.25 s"),
        (Duration::from_millis(12_500), "12.5 s"),
        (Duration::from_secs(125), "125 s"),
        (Duration::ZERO, "0.000 ms"),
    ];
    for (duration, expected) in cases {
        assert_eq!(ms(duration), expected);
    }
}
