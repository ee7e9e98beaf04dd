//! Generates `generated.rs`: thousands of `#[traced]` functions of varied
//! signatures, a check function per unit that calls them with fixed
//! arguments and compares the results against values computed here, in the
//! build script, by separate code; and the table of sites the macro must
//! have recorded (path, line, number of instantiations).

use std::fmt::Write as _;
use std::path::PathBuf;

/// Units per kind; 14 kinds of 1-5 traced functions each.
const ROUNDS: usize = 75;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A float that is exact in f32 and prints exactly with `{:?}`.
    fn float(&mut self) -> f64 {
        (self.below(8001) as f64 - 4000.0) / 8.0
    }
}

#[derive(Default)]
struct Gen {
    lines: Vec<String>,
    /// (path after the crate name, line of the name, instantiations)
    sites: Vec<(String, usize, usize)>,
    /// (unit name, check fn name)
    checks: Vec<(String, String)>,
    traced_fns: usize,
}

impl Gen {
    fn push(&mut self, text: &str) {
        for l in text.lines() {
            self.lines.push(l.to_string());
        }
    }
    /// Pushes a line holding a traced function's name, recording its site.
    fn site(&mut self, path: String, instances: usize, text: &str) {
        assert!(!text.contains('\n'));
        self.sites.push((path, self.lines.len() + 1, instances));
        self.traced_fns += 1;
        self.lines.push(text.to_string());
    }
    fn check(&mut self, unit: &str, body: &str) {
        let name = format!("check_{}", unit.to_lowercase());
        self.push(&format!(
            "pub fn {name}() -> Result<u64, String> {{\n{body}\n}}"
        ));
        self.checks.push((unit.to_string(), name));
    }
}

fn f64_lit(x: f64) -> String {
    format!("f64::from_bits({:#x})", x.to_bits())
}

const P: &str = "gen::";

fn kind_ints(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next() | 1;
    g.push("#[traced]");
    g.site(
        format!("{P}ints_{u}"),
        1,
        &format!("pub fn ints_{u}(a: u64, b: u32, c: u16, d: u8, e: i64, f: i32, g: i16, h: i8, i: u64) -> u64 {{"),
    );
    g.push(&format!(
        "    a.wrapping_mul({s}).wrapping_add(b as u64) ^ ((c as u64) << 7) ^ ((d as u64) << 29) \
         ^ (e as u64).rotate_left(13) ^ (f as i64 as u64).wrapping_mul(3) ^ ((g as i64 as u64) << 40) \
         ^ (h as i64 as u64) ^ i.rotate_right(5)\n}}"
    ));
    let (a, b, c, d) = (r.next(), r.next() as u32, r.next() as u16, r.next() as u8);
    let (e, f, gg, h) = (
        r.next() as i64 / 3,
        r.next() as i32 / 3,
        r.next() as i16 / 3,
        r.next() as i8 / 3,
    );
    let i = r.next();
    let want = a.wrapping_mul(s).wrapping_add(b as u64)
        ^ ((c as u64) << 7)
        ^ ((d as u64) << 29)
        ^ (e as u64).rotate_left(13)
        ^ (f as i64 as u64).wrapping_mul(3)
        ^ ((gg as i64 as u64) << 40)
        ^ (h as i64 as u64)
        ^ i.rotate_right(5);
    let args = format!("{a}u64, {b}u32, {c}u16, {d}u8, {e}i64, {f}i32, {gg}i16, {h}i8, {i}u64");
    // Half the units call through a function pointer to the traced fn.
    let call = if u.is_multiple_of(2) {
        format!(
            "let p: fn(u64, u32, u16, u8, i64, i32, i16, i8, u64) -> u64 = std::hint::black_box(ints_{u} as fn(u64, u32, u16, u8, i64, i32, i16, i8, u64) -> u64);\n    let got = p({args});"
        )
    } else {
        format!("let got = ints_{u}({args});")
    };
    g.check(
        &format!("ints_{u}"),
        &format!("    {call}\n    if got != {want}u64 {{ return Err(format!(\"got {{got}}, want {want}\")); }}\n    Ok(1)"),
    );
}

fn kind_floats(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.float();
    g.push("#[traced]");
    g.site(
        format!("{P}floats_{u}"),
        1,
        &format!("pub fn floats_{u}(a: f64, b: f32, c: f64, d: f64, e: f64, f: f64, g: f64, h: f64, i: f64, j: f32, k: u32) -> f64 {{"),
    );
    g.push(&format!(
        "    (a * {s:?}) + b as f64 - c * d + e / 3.0 + f * g - h + i * 0.5 + j as f64 + k as f64\n}}"
    ));
    let v: Vec<f64> = (0..10).map(|_| r.float()).collect();
    let k = r.next() as u32;
    let (a, b, c, d, e, f, gg, h, i, j) = (
        v[0],
        v[1] as f32,
        v[2],
        v[3],
        v[4],
        v[5],
        v[6],
        v[7],
        v[8],
        v[9] as f32,
    );
    let want = (a * s) + b as f64 - c * d + e / 3.0 + f * gg - h + i * 0.5 + j as f64 + k as f64;
    g.check(
        &format!("floats_{u}"),
        &format!(
            "    let got = floats_{u}({a:?}, {b:?}, {c:?}, {d:?}, {e:?}, {f:?}, {gg:?}, {h:?}, {i:?}, {j:?}, {k});\n    \
             if got.to_bits() != {want_bits:#x} {{ return Err(format!(\"got {{got}}, want {{}}\", {wl})); }}\n    Ok(1)",
            want_bits = want.to_bits(),
            wl = f64_lit(want),
        ),
    );
}

#[derive(Clone, Copy)]
struct Big {
    a: [u64; 8],
    x: f64,
    t: (u32, u16),
}

fn big_lit(b: &Big) -> String {
    format!(
        "Big {{ a: {:?}, x: {}, t: ({}, {}) }}",
        b.a,
        f64_lit(b.x),
        b.t.0,
        b.t.1
    )
}

fn kind_big(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next() | 1;
    let s32 = r.next() as u32;
    g.push("#[traced]");
    g.site(
        format!("{P}big_{u}"),
        1,
        &format!("pub fn big_{u}(mut s: Big, k: u64, m: &mut u64) -> Big {{"),
    );
    g.push(&format!(
        "    for (j, v) in s.a.iter_mut().enumerate() {{ *v = v.wrapping_mul({s}).wrapping_add(k.wrapping_add(j as u64)); }}\n    \
         s.x = s.x * 2.0 + k as f64;\n    s.t = (s.t.0 ^ {s32}, s.t.1.wrapping_add(k as u16));\n    *m = m.wrapping_add(s.a[3]);\n    s\n}}"
    ));
    let mut a = [0u64; 8];
    for v in &mut a {
        *v = r.next();
    }
    let input = Big {
        a,
        x: r.float(),
        t: (r.next() as u32, r.next() as u16),
    };
    let k = r.next();
    let m0 = r.next();
    let mut out = input;
    for (j, v) in out.a.iter_mut().enumerate() {
        *v = v.wrapping_mul(s).wrapping_add(k.wrapping_add(j as u64));
    }
    out.x = out.x * 2.0 + k as f64;
    out.t = (out.t.0 ^ s32, out.t.1.wrapping_add(k as u16));
    let m1 = m0.wrapping_add(out.a[3]);
    g.check(
        &format!("big_{u}"),
        &format!(
            "    let mut m = {m0}u64;\n    let got = big_{u}({}, {k}, &mut m);\n    let want = {};\n    \
             if got != want || m != {m1} {{ return Err(format!(\"got {{got:?}} m={{m}}, want {{want:?}} m={m1}\")); }}\n    Ok(1)",
            big_lit(&input),
            big_lit(&out)
        ),
    );
}

fn kind_refs(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    let kk = r.below(50) as usize;
    g.push("#[traced]");
    g.site(
        format!("{P}refs_{u}"),
        1,
        &format!("pub fn refs_{u}(acc: &mut u64, v: &[u32], s: &str, o: Option<&u8>) -> usize {{"),
    );
    g.push(&format!(
        "    for x in v {{ *acc = acc.wrapping_mul(31).wrapping_add(*x as u64 ^ {s}); }}\n    \
         *acc ^= s.len() as u64;\n    s.len() + v.len() * {kk} + o.map_or(0, |b| *b as usize)\n}}"
    ));
    let acc0 = r.next();
    let v: Vec<u32> = (0..1 + r.below(6)).map(|_| r.next() as u32).collect();
    let st: String = (0..r.below(12))
        .map(|i| (b'a' + (i as u8 % 26)) as char)
        .collect();
    let o = if r.below(2) == 0 {
        None
    } else {
        Some(r.next() as u8)
    };
    let mut acc = acc0;
    for x in &v {
        acc = acc.wrapping_mul(31).wrapping_add(*x as u64 ^ s);
    }
    acc ^= st.len() as u64;
    let ret = st.len() + v.len() * kk + o.map_or(0, |b| b as usize);
    let o_lit = match o {
        None => "None".to_string(),
        Some(b) => format!("Some(&{b}u8)"),
    };
    g.check(
        &format!("refs_{u}"),
        &format!(
            "    let mut acc = {acc0}u64;\n    let got = refs_{u}(&mut acc, &{v:?}, {st:?}, {o_lit});\n    \
             if got != {ret} || acc != {acc} {{ return Err(format!(\"got {{got}} acc={{acc}}, want {ret} acc={acc}\")); }}\n    Ok(1)"
        ),
    );
}

fn kind_tuples(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    g.push("#[traced]");
    g.site(
        format!("{P}tup_{u}"),
        1,
        &format!("pub fn tup_{u}((a, b): (u32, f64), t: (u8, i64, f32), (c, (d, e)): (u16, (u64, bool))) -> (u64, f64, bool) {{"),
    );
    g.push(&format!(
        "    let x = (a as u64 ^ {s}).wrapping_add(t.0 as u64).wrapping_add(t.1 as u64).wrapping_add(c as u64).wrapping_mul(d | 1);\n    \
         let y = b * 1.5 + t.2 as f64;\n    (x, y, e ^ (x & 1 == 1))\n}}"
    ));
    let (a, b) = (r.next() as u32, r.float());
    let t = (r.next() as u8, r.next() as i64, r.float() as f32);
    let (c, d, e) = (r.next() as u16, r.next(), r.below(2) == 1);
    let x = (a as u64 ^ s)
        .wrapping_add(t.0 as u64)
        .wrapping_add(t.1 as u64)
        .wrapping_add(c as u64)
        .wrapping_mul(d | 1);
    let y = b * 1.5 + t.2 as f64;
    let z = e ^ (x & 1 == 1);
    g.check(
        &format!("tup_{u}"),
        &format!(
            "    let got = tup_{u}(({a}, {b:?}), ({}, {}, {:?}), ({c}, ({d}, {e})));\n    \
             if got.0 != {x} || got.1.to_bits() != {:#x} || got.2 != {z} {{ return Err(format!(\"got {{got:?}}\")); }}\n    Ok(1)",
            t.0,
            t.1,
            t.2,
            y.to_bits()
        ),
    );
}

fn kind_inherent(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    let ty = format!("S{u}");
    g.push(&format!(
        "pub struct {ty} {{ v: u64, f: f64, name: String }}\n#[traced]\nimpl {ty} {{"
    ));
    g.site(
        format!("{P}{ty}::new"),
        1,
        "    pub fn new(v: u64, f: f64) -> Self {",
    );
    g.push(&format!(
        "        {ty} {{ v: v ^ {s}, f, name: format!(\"s{u}\") }}\n    }}"
    ));
    g.site(format!("{P}{ty}::get"), 1, "    pub fn get(&self) -> u64 {");
    g.push("        self.v\n    }");
    g.site(
        format!("{P}{ty}::bump"),
        1,
        "    pub fn bump(&mut self, k: u64, mult: f64) -> f64 {",
    );
    g.push(
        "        self.v = self.v.wrapping_add(k);\n        self.f *= mult;\n        self.f\n    }",
    );
    g.site(
        format!("{P}{ty}::into_parts"),
        1,
        "    pub fn into_parts(self) -> (u64, f64, String) {",
    );
    g.push("        (self.v, self.f, self.name)\n    }");
    g.site(
        format!("{P}{ty}::boxed"),
        1,
        "    pub fn boxed(self: Box<Self>, k: u64) -> u64 {",
    );
    g.push("        self.v.rotate_left(3) ^ k\n    }\n}");
    let (v, f, k, m, v2, k2) = (r.next(), r.float(), r.next(), r.float(), r.next(), r.next());
    let v0 = v ^ s;
    let v1 = v0.wrapping_add(k);
    let f1 = f * m;
    let boxed = (v2 ^ s).rotate_left(3) ^ k2;
    // Even units read `get` through a method pointer.
    let get = if u.is_multiple_of(2) {
        format!("let get: fn(&{ty}) -> u64 = std::hint::black_box({ty}::get as fn(&{ty}) -> u64);")
    } else {
        format!("let get = {ty}::get;")
    };
    g.check(
        &ty,
        &format!(
            "    {get}\n    let mut s = {ty}::new({v}, {f:?});\n    if get(&s) != {v0} {{ return Err(\"new/get\".into()); }}\n    \
             let r = s.bump({k}, {m:?});\n    if r.to_bits() != {:#x} || get(&s) != {v1} {{ return Err(format!(\"bump {{r}}\")); }}\n    \
             let (a, b, c) = s.into_parts();\n    if a != {v1} || b.to_bits() != {:#x} || c != \"s{u}\" {{ return Err(\"into_parts\".into()); }}\n    \
             let bx = Box::new({ty}::new({v2}, 0.0));\n    if bx.boxed({k2}) != {boxed} {{ return Err(\"boxed\".into()); }}\n    Ok(7)",
            f1.to_bits(),
            f1.to_bits()
        ),
    );
}

fn kind_trait(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    let ty = format!("T{u}");
    let p = format!("{P}<{ty} as Op>");
    g.push(&format!(
        "pub struct {ty}(u64, f64, String);\n#[traced]\nimpl Op for {ty} {{"
    ));
    g.site(
        format!("{p}::apply"),
        1,
        "    fn apply(&self, x: u64) -> u64 {",
    );
    g.push(&format!("        x.wrapping_mul(self.0) ^ {s}\n    }}"));
    g.site(
        format!("{p}::mutate"),
        1,
        "    fn mutate(&mut self, x: f64) -> f64 {",
    );
    g.push("        self.1 = self.1 * x - 1.0;\n        self.1\n    }");
    g.site(format!("{p}::label"), 1, "    fn label(&self) -> &str {");
    g.push("        &self.2\n    }");
    g.site(
        format!("{p}::big"),
        1,
        "    fn big(&self, mut b: Big) -> Big {",
    );
    g.push("        b.x += self.1;\n        b.a[0] ^= self.0;\n        b\n    }");
    g.site(
        format!("{p}::consume"),
        1,
        "    fn consume(self: Box<Self>) -> u64 {",
    );
    g.push("        self.0 + self.2.len() as u64\n    }\n}");
    let (n, f, x, y) = (r.next(), r.float(), r.next(), r.float());
    let label: String = (0..r.below(9)).map(|i| (b'k' + i as u8) as char).collect();
    let apply = x.wrapping_mul(n) ^ s;
    let f1 = f * y - 1.0;
    let mut a = [0u64; 8];
    for v in &mut a {
        *v = r.next();
    }
    let bin = Big {
        a,
        x: r.float(),
        t: (r.next() as u32, r.next() as u16),
    };
    let mut bout = bin;
    bout.x += f1;
    bout.a[0] ^= n;
    let consume = n.wrapping_add(label.len() as u64);
    g.check(
        &ty,
        &format!(
            "    let mut b: Box<dyn Op> = Box::new({ty}({n}, {f:?}, {label:?}.to_string()));\n    \
             if b.apply({x}) != {apply} {{ return Err(\"apply\".into()); }}\n    \
             if b.mutate({y:?}).to_bits() != {:#x} {{ return Err(\"mutate\".into()); }}\n    \
             if b.label() != {label:?} {{ return Err(\"label\".into()); }}\n    \
             if b.big({}) != ({}) {{ return Err(\"big\".into()); }}\n    \
             if b.consume() != {consume} {{ return Err(\"consume\".into()); }}\n    Ok(5)",
            f1.to_bits(),
            big_lit(&bin),
            big_lit(&bout)
        ),
    );
}

fn kind_generic(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    g.push("#[traced]");
    g.site(
        format!("{P}gen_{u}"),
        2,
        &format!("pub fn gen_{u}<T: Into<u64> + Copy>(a: T, b: T, k: u64) -> u64 {{"),
    );
    g.push(&format!(
        "    (a.into() ^ {s}).wrapping_mul(b.into() | 1).wrapping_add(k)\n}}"
    ));
    g.push("#[traced]");
    g.site(
        format!("{P}arr_{u}"),
        2,
        &format!("pub fn arr_{u}<const N: usize>(a: [u16; N]) -> u64 {{"),
    );
    g.push(&format!(
        "    a.iter().fold({s}, |acc, x| acc.rotate_left(5) ^ *x as u64)\n}}"
    ));
    let (a, b, k) = (r.next() as u32, r.next() as u32, r.next());
    let (a8, b8) = (r.next() as u8, r.next() as u8);
    let w1 = (a as u64 ^ s).wrapping_mul(b as u64 | 1).wrapping_add(k);
    let w2 = (a8 as u64 ^ s).wrapping_mul(b8 as u64 | 1).wrapping_add(k);
    let x3: Vec<u16> = (0..3).map(|_| r.next() as u16).collect();
    let x5: Vec<u16> = (0..5).map(|_| r.next() as u16).collect();
    let fold = |v: &[u16]| v.iter().fold(s, |acc, x| acc.rotate_left(5) ^ *x as u64);
    let (w3, w5) = (fold(&x3), fold(&x5));
    g.check(
        &format!("gen_{u}"),
        &format!(
            "    if gen_{u}({a}u32, {b}u32, {k}) != {w1} {{ return Err(\"u32\".into()); }}\n    \
             if gen_{u}({a8}u8, {b8}u8, {k}) != {w2} {{ return Err(\"u8\".into()); }}\n    \
             if arr_{u}({x3:?}) != {w3} {{ return Err(\"N=3\".into()); }}\n    \
             if arr_{u}({x5:?}) != {w5} {{ return Err(\"N=5\".into()); }}\n    Ok(4)"
        ),
    );
}

fn kind_lifetimes(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    g.push("#[traced]");
    g.site(
        format!("{P}pick_{u}"),
        1,
        &format!(
            "pub fn pick_{u}<'a, 'b: 'a>(a: &'a [u64], b: &'b [u64], k: usize) -> &'a [u64] {{"
        ),
    );
    g.push(&format!(
        "    if a.iter().fold({s}, |x, y| x ^ y) > b.iter().fold(0u64, |x, y| x.wrapping_add(*y)) {{ a }} else {{ &b[..k] }}\n}}"
    ));
    let a: Vec<u64> = (0..1 + r.below(4)).map(|_| r.next()).collect();
    let b: Vec<u64> = (0..1 + r.below(4)).map(|_| r.next()).collect();
    let k = r.below(b.len() as u64 + 1) as usize;
    let want: &[u64] =
        if a.iter().fold(s, |x, y| x ^ y) > b.iter().fold(0u64, |x, y| x.wrapping_add(*y)) {
            &a
        } else {
            &b[..k]
        };
    g.check(
        &format!("pick_{u}"),
        &format!(
            "    let (a, b): ([u64; {}], [u64; {}]) = ({a:?}, {b:?});\n    let want: &[u64] = &{want:?};\n    let got = pick_{u}(&a, &b, {k});\n    \
             if got != want {{ return Err(format!(\"got {{got:?}}\")); }}\n    Ok(1)",
            a.len(),
            b.len()
        ),
    );
}

fn kind_unsafe(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    g.push("#[traced]");
    g.site(
        format!("{P}raw_{u}"),
        1,
        &format!("pub unsafe fn raw_{u}(p: *const u64, n: usize, out: *mut u64) -> u64 {{"),
    );
    g.push(&format!(
        "    let mut s = {s}u64;\n    for i in 0..n {{\n        // SAFETY: the caller passes `n` readable elements.\n        \
         let v = unsafe {{ *p.add(i) }};\n        s = s.rotate_left(7) ^ v;\n    }}\n    \
         // SAFETY: the caller passes a writable `out`.\n    unsafe {{ *out = s }};\n    s.wrapping_mul(3)\n}}"
    ));
    let v: Vec<u64> = (0..1 + r.below(5)).map(|_| r.next()).collect();
    let mut acc = s;
    for x in &v {
        acc = acc.rotate_left(7) ^ x;
    }
    g.check(
        &format!("raw_{u}"),
        &format!(
            "    let v = {v:?};\n    let mut out = 0u64;\n    \
             // SAFETY: `v` has `v.len()` elements and `out` is a local.\n    \
             let got = unsafe {{ raw_{u}(v.as_ptr(), v.len(), &mut out) }};\n    \
             if got != {} || out != {acc} {{ return Err(format!(\"got {{got}} out={{out}}\")); }}\n    Ok(1)",
            acc.wrapping_mul(3)
        ),
    );
}

fn kind_nested(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next() | 1;
    g.push("#[traced]");
    g.site(
        format!("{P}leaf_{u}"),
        1,
        &format!("pub fn leaf_{u}(x: u64) -> u64 {{"),
    );
    g.push(&format!("    x.wrapping_mul({s}) ^ (x >> 3)\n}}"));
    g.push("#[traced]");
    g.site(
        format!("{P}outer_{u}"),
        1,
        &format!("pub fn outer_{u}(x: u64, depth: u32) -> u64 {{"),
    );
    g.push(&format!(
        "    let mut v = x;\n    for _ in 0..depth {{ v = leaf_{u}(v); }}\n    v ^ 1\n}}"
    ));
    let (x, d) = (r.next(), r.below(4) as u32);
    let mut v = x;
    for _ in 0..d {
        v = v.wrapping_mul(s) ^ (v >> 3);
    }
    g.check(
        &format!("outer_{u}"),
        &format!(
            "    if outer_{u}({x}, {d}) != {} {{ return Err(\"outer\".into()); }}\n    Ok({})",
            v ^ 1,
            1 + d
        ),
    );
}

fn kind_mod(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    let s32 = r.next() as u32;
    let m = format!("md_{u}");
    g.push(&format!("#[traced]\npub mod {m} {{"));
    g.site(format!("{P}{m}::a"), 1, "    pub fn a(x: u64) -> u64 {");
    g.push(&format!(
        "        x ^ {s}\n    }}\n    pub struct W(pub u32);\n    impl W {{"
    ));
    g.site(
        format!("{P}{m}::W::get"),
        1,
        "        pub fn get(&self) -> u32 {",
    );
    g.push(&format!("            self.0.wrapping_mul({s32})\n        }}\n    }}\n    impl core::fmt::Display for W {{"));
    g.site(
        format!("{P}{m}::<W as core::fmt::Display>::fmt"),
        1,
        "        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {",
    );
    g.push("            write!(f, \"W{}\", self.0)\n        }\n    }\n    #[traced(skip)]\n    pub const fn k() -> u32 {\n        7\n    }\n}");
    let (x, w) = (r.next(), r.next() as u32);
    g.check(
        &m,
        &format!(
            "    const K: u32 = {m}::k();\n    if K != 7 {{ return Err(\"k\".into()); }}\n    \
             if {m}::a({x}) != {} {{ return Err(\"a\".into()); }}\n    \
             if {m}::W({w}).get() != {} {{ return Err(\"get\".into()); }}\n    \
             if {m}::W({w}).to_string() != \"W{w}\" {{ return Err(\"fmt\".into()); }}\n    Ok(3)",
            x ^ s,
            w.wrapping_mul(s32)
        ),
    );
}

fn kind_generic_impl(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    let sf = r.float();
    let ty = format!("G{u}");
    g.push(&format!(
        "pub struct {ty}<T>(pub T, pub u64);\n#[traced]\nimpl<T: Copy + Into<f64>> {ty}<T> {{"
    ));
    g.site(
        format!("{P}{ty}<T>::val"),
        2,
        "    pub fn val(&self) -> f64 {",
    );
    g.push(&format!(
        "        self.0.into() * {sf:?} + self.1 as f64\n    }}"
    ));
    g.site(
        format!("{P}{ty}<T>::with"),
        2,
        "    pub fn with<U: Into<u64>>(&self, u: U) -> u64 {",
    );
    g.push(&format!(
        "        u.into().wrapping_mul(self.1) ^ {s}\n    }}\n}}"
    ));
    let (a8, af, n, w) = (
        r.next() as u8,
        r.float() as f32,
        r.below(1 << 40),
        r.next() as u16,
    );
    let v1 = a8 as f64 * sf + n as f64;
    let v2 = af as f64 * sf + n as f64;
    let wv = (w as u64).wrapping_mul(n) ^ s;
    g.check(
        &ty,
        &format!(
            "    let (a, b) = ({ty}({a8}u8, {n}), {ty}({af:?}f32, {n}));\n    \
             if a.val().to_bits() != {:#x} || b.val().to_bits() != {:#x} {{ return Err(\"val\".into()); }}\n    \
             if a.with({w}u16) != {wv} || b.with({w}u16) != {wv} {{ return Err(\"with\".into()); }}\n    Ok(4)",
            v1.to_bits(),
            v2.to_bits()
        ),
    );
}

fn kind_iter(g: &mut Gen, u: usize, r: &mut Rng) {
    let s = r.next();
    let ty = format!("It{u}");
    g.push(&format!(
        "pub struct {ty} {{ n: u64, left: u32 }}\n#[traced]\nimpl Iterator for {ty} {{\n    type Item = u64;"
    ));
    g.site(
        format!("{P}<{ty} as Iterator>::next"),
        1,
        "    fn next(&mut self) -> Option<u64> {",
    );
    g.push(&format!(
        "        if self.left == 0 {{ return None; }}\n        self.left -= 1;\n        self.n = self.n.wrapping_mul({s}) ^ 7;\n        Some(self.n)\n    }}\n}}"
    ));
    g.push("#[traced]");
    g.site(
        format!("{P}push_{u}"),
        1,
        &format!("pub fn push_{u}(v: &mut Vec<u64>, x: u64) {{"),
    );
    g.push(&format!("    v.push(x ^ {s});\n}}"));
    let (n, left) = (r.next(), r.below(5) as u32);
    let mut want = Vec::new();
    let mut cur = n;
    for _ in 0..left {
        cur = cur.wrapping_mul(s) ^ 7;
        want.push(cur ^ s);
    }
    g.check(
        &ty,
        &format!(
            "    let mut it = {ty} {{ n: {n}, left: {left} }};\n    let mut v = Vec::new();\n    \
             while let Some(x) = it.next() {{ push_{u}(&mut v, x); }}\n    \
             let want: Vec<u64> = vec!{want:?};\n    if v != want {{ return Err(format!(\"got {{v:?}}\")); }}\n    Ok({})",
            2 * left + 1
        ),
    );
}

type Kind = fn(&mut Gen, usize, &mut Rng);

const KINDS: [Kind; 14] = [
    kind_ints,
    kind_floats,
    kind_big,
    kind_refs,
    kind_tuples,
    kind_inherent,
    kind_trait,
    kind_generic,
    kind_lifetimes,
    kind_unsafe,
    kind_nested,
    kind_mod,
    kind_generic_impl,
    kind_iter,
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let mut g = Gen::default();
    let mut r = Rng(0x5eed_1234_abcd_0001);
    g.push(
        "// Generated by build.rs. Do not edit.\n\
         use livetrace::traced;\n\
         use super::{Big, Op};\n\
         /// `file!()` of this file, as the site records carry it.\n\
         pub const FILE: &str = file!();",
    );
    for u in 0..ROUNDS * KINDS.len() {
        KINDS[u % KINDS.len()](&mut g, u, &mut r);
    }
    let mut s = String::new();
    for l in &g.lines {
        s.push_str(l);
        s.push('\n');
    }
    writeln!(
        s,
        "/// Every unit's check: (name, fn returning the number of traced calls made)."
    )
    .unwrap();
    writeln!(
        s,
        "pub static CHECKS: &[(&str, fn() -> Result<u64, String>)] = &["
    )
    .unwrap();
    for (unit, f) in &g.checks {
        writeln!(s, "    ({unit:?}, {f}),").unwrap();
    }
    writeln!(s, "];").unwrap();
    writeln!(
        s,
        "/// Every traced fn: (path after the crate name, line, instantiations)."
    )
    .unwrap();
    writeln!(s, "pub static SITES: &[(&str, u32, usize)] = &[").unwrap();
    for (p, l, n) in &g.sites {
        writeln!(s, "    ({p:?}, {l}, {n}),").unwrap();
    }
    writeln!(s, "];").unwrap();
    writeln!(s, "/// Number of `#[traced]` functions in this file.").unwrap();
    writeln!(s, "pub const TRACED_FNS: usize = {};", g.traced_fns).unwrap();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("generated.rs");
    std::fs::write(out, s).unwrap();
}
