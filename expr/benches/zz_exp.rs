use std::hint::black_box;
use criterion::{criterion_group, criterion_main, Criterion};
use rhai::{Dynamic, Engine, Scope, ImmutableString};
use std::time::Duration;

fn exp(c: &mut Criterion) {
    let mut e = Engine::new();
    e.set_max_operations(10_000).set_strict_variables(true);
    let mut scope = Scope::new();
    scope.push_dynamic("_v0", Dynamic::from_int(5));
    scope.push_dynamic("_v1", Dynamic::from(ImmutableString::from("x")));
    let ast = e.compile_expression_with_scope(&scope, "_v0 > 3 && _v1 == \"x\"").unwrap();
    let ast2 = e.compile_expression_with_scope(&scope, "_v0 * 2").unwrap();
    let ast3 = e.compile_expression_with_scope(&scope, "_v0").unwrap();
    let ast4 = e.compile_expression_with_scope(&scope, "_v0 > 3").unwrap();
    let ast5 = e.compile_expression_with_scope(&scope, "_v1 == \"x\"").unwrap();
    c.bench_function("raw cond prefilled", |b| b.iter(|| e.eval_ast_with_scope::<Dynamic>(&mut scope, black_box(&ast))));
    c.bench_function("raw mul prefilled", |b| b.iter(|| e.eval_ast_with_scope::<Dynamic>(&mut scope, black_box(&ast2))));
    c.bench_function("raw var prefilled", |b| b.iter(|| e.eval_ast_with_scope::<Dynamic>(&mut scope, black_box(&ast3))));
    c.bench_function("raw gt prefilled", |b| b.iter(|| e.eval_ast_with_scope::<Dynamic>(&mut scope, black_box(&ast4))));
    c.bench_function("raw streq prefilled", |b| b.iter(|| e.eval_ast_with_scope::<Dynamic>(&mut scope, black_box(&ast5))));
    c.bench_function("refill 2", |b| b.iter(|| {
        scope.clear();
        scope.push_constant_dynamic("_v0", Dynamic::from_int(5));
        scope.push_constant_dynamic("_v1", Dynamic::from(ImmutableString::from(black_box("x"))));
    }));
    let mut e2 = Engine::new();
    e2.set_max_operations(10_000);
    #[allow(deprecated)]
    e2.on_var(|name, _, _| Ok(match name { "_v0" => Some(Dynamic::from_int(5)), "_v1" => Some(Dynamic::from(ImmutableString::from("x"))), _ => None }));
    let ast_ov = e2.compile_expression("_v0 > 3 && _v1 == \"x\"").unwrap();
    let mut empty = Scope::new();
    c.bench_function("on_var cond", |b| b.iter(|| e2.eval_ast_with_scope::<Dynamic>(&mut empty, black_box(&ast_ov))));
    let ast_ov2 = e2.compile_expression("_v0 * 2").unwrap();
    c.bench_function("on_var mul", |b| b.iter(|| e2.eval_ast_with_scope::<Dynamic>(&mut empty, black_box(&ast_ov2))));
}
criterion_group! { name = benches; config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20); targets = exp }
criterion_main!(benches);
