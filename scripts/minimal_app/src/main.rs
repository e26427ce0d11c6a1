//! Recognises the expression in one face image with a model file: `minimal_app MODEL.mpk IMAGE`.

use adcorre::infer::TestModels;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(image)) = (args.next(), args.next()) else {
        return Err("usage: minimal_app MODEL.mpk IMAGE".into());
    };
    let recognition = TestModels::new(model)?.recognize_fer(image)?;
    println!("{} ({:.3})", recognition.expression, recognition.confidence());
    Ok(())
}
