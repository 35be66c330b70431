//! `vprompt eval davis` against an independent Python implementation of the same definitions
//! (tools/crosscheck/davis_jf.py) on real predictions of real DAVIS frames: they agree within 1e-4.

mod common;

use common::*;

#[test]
fn eval_davis_matches_the_python_reference() {
    if skip_without(&["davis2016-train-240p"]) {
        return;
    }
    let data = davis();
    let tmp = tempfile::tempdir().unwrap();
    let (gt_root, pred_root) = (tmp.path().join("gt"), tmp.path().join("pred"));
    for seq in ["car-turn", "soccerball"] {
        // Ground truth: the first 24 annotated frames; predictions: the colour model propagating frame 0.
        let gt = gt_root.join(seq);
        std::fs::create_dir_all(&gt).unwrap();
        for i in 0..24 {
            let name = format!("{i:05}.png");
            std::fs::copy(
                data.join("Annotations").join(seq).join(&name),
                gt.join(&name),
            )
            .unwrap();
        }
        let prompts = write(
            tmp.path(),
            &format!("{seq}.yaml"),
            &format!(
                "objects:\n  - {{ id: 1, frame: 0, mask: {:?} }}\n",
                gt.join("00000.png")
            ),
        );
        let pipe = write(
            tmp.path(),
            &format!("pipe-{seq}.yaml"),
            &format!(
                "source: {{ frames: {:?}, end: 24 }}\nmodel: {:?}\nprompts: {prompts:?}\njob: {{ min_area: 5 }}\nsinks:\n  - {{ kind: palette_png, dir: {:?} }}\n",
                data.join("JPEGImages").join(seq),
                fixture("color-model"),
                pred_root.join(seq)
            ),
        );
        let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let json = tmp.path().join("rust.json");
    let o = vprompt(&[
        "eval",
        "davis",
        "--pred",
        pred_root.to_str().unwrap(),
        "--gt",
        gt_root.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let py_json = tmp.path().join("py.json");
    let py = python()
        .arg(root().join("tools/crosscheck/davis_jf.py"))
        .arg("--pred")
        .arg(&pred_root)
        .arg("--gt")
        .arg(&gt_root)
        .arg("--out")
        .arg(&py_json)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&py_json).unwrap()).unwrap();
    let jf_ours = ours["jf_mean"].as_f64().unwrap();
    let jf_theirs = theirs["JF_mean"].as_f64().expect("python J&F");
    assert!(
        (jf_ours - jf_theirs).abs() <= 1e-4,
        "J&F rust {jf_ours} python {jf_theirs}"
    );
    for (o, t) in [("j_mean", "J_mean"), ("f_mean", "F_mean")] {
        let (a, b) = (ours[o].as_f64().unwrap(), theirs[t].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4, "{o}: rust {a} python {b}");
    }
    // Not a trivial agreement: the colour model is far from perfect on real frames.
    assert!(jf_ours < 0.95 && jf_ours > 0.0, "J&F {jf_ours}");
}
