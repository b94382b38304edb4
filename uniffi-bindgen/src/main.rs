//! `uniffi-bindgen`: generates the Kotlin, Swift and Python sources of fieldsync-bindings from
//! the built library (`uniffi-bindgen generate --library target/debug/libfieldsync_bindings.so
//! --language kotlin --out-dir DIR`). `bindings/generate.sh` runs it.

fn main() {
    uniffi::uniffi_bindgen_main()
}
