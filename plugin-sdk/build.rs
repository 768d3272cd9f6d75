// Rebuild the bindings when the contract changes.
fn main() {
    println!("cargo:rerun-if-changed=../wit");
}
