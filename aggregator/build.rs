//! Embeds the console (`console/`): every file gzip-compressed into the binary, with
//! its content type and an ETag, listed in `$OUT_DIR/console_assets.rs`. The console is
//! plain HTML, CSS and JavaScript modules: no Node toolchain, nothing generated.

use std::io::Write;
use std::path::Path;

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn main() {
    // Read at run time: a build script's binary is shared by checkouts in other
    // directories that use the same target directory.
    let src = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("console");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("console");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/console");
    println!("cargo:rerun-if-changed=console");
    let mut names: Vec<String> = std::fs::read_dir(&src)
        .expect("read console/")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut table = String::from("/// The console's files.\npub static ASSETS: &[Asset] = &[\n");
    for name in &names {
        println!("cargo:rerun-if-changed=console/{name}");
        let data = std::fs::read(src.join(name)).expect("read a console file");
        // FNV-1a over the content: the ETag changes exactly when the file does.
        let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&data).expect("gzip");
        let gz = gz.finish().expect("gzip");
        std::fs::write(out.join(format!("{name}.gz")), gz).expect("write a compressed file");
        table.push_str(&format!(
            "    Asset {{ name: {name:?}, mime: {:?}, etag: \"\\\"{hash:016x}\\\"\", gz: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/console/{name}.gz\")) }},\n",
            mime(name)
        ));
    }
    table.push_str("];\n");
    std::fs::write(
        Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("console_assets.rs"),
        table,
    )
    .expect("write console_assets.rs");
}
