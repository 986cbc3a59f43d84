//! The formula language of `transform.derive`: numbers, column names, `+ - * /`, unary minus,
//! parentheses, and the functions `max(a, b)`, `min(a, b)`, `abs(a)`, `sqrt(a)`, `ln(a)`, `exp(a)`
//! and `coalesce(a, b)`. Operands are read as f64; a null operand makes the result null.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};

use super::expr::ExprError;
use crate::error::{Error, Result};

/// A parsed formula.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Number(f64),
    Column { name: String, offset: usize },
    Neg(Box<Expr>),
    Binary(char, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// The functions of the language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Max,
    Min,
    Abs,
    Sqrt,
    Ln,
    Exp,
    /// `coalesce(a, b)`: a where it is present and finite, else b (SQL's COALESCE). How a
    /// feature that is undefined for some rows (a fit without subthreshold samples) becomes a
    /// sentinel a tree model can split on, next to an indicator column that says why.
    Coalesce,
}

impl Func {
    fn from_name(name: &str) -> Option<(Func, usize)> {
        Some(match name {
            "max" => (Func::Max, 2),
            "min" => (Func::Min, 2),
            "abs" => (Func::Abs, 1),
            "sqrt" => (Func::Sqrt, 1),
            "ln" => (Func::Ln, 1),
            "exp" => (Func::Exp, 1),
            "coalesce" => (Func::Coalesce, 2),
            _ => return None,
        })
    }
}

impl Expr {
    /// The columns the formula reads, with their character offsets, in reading order.
    pub fn columns<'a>(&'a self, out: &mut Vec<(&'a str, usize)>) {
        match self {
            Expr::Number(_) => {}
            Expr::Column { name, offset } => out.push((name, *offset)),
            Expr::Neg(a) => a.columns(out),
            Expr::Binary(_, a, b) => {
                a.columns(out);
                b.columns(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.columns(out)),
        }
    }

    /// The value of every row (None = null).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<Option<f64>>> {
        let n = batch.num_rows();
        Ok(match self {
            Expr::Number(x) => vec![Some(*x); n],
            Expr::Column { name, .. } => {
                let c = batch.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}`")))?;
                let c = arrow::compute::cast(c, &DataType::Float64)?;
                let c = c.as_primitive::<Float64Type>();
                (0..n).map(|r| (!c.is_null(r)).then(|| c.value(r))).collect()
            }
            Expr::Neg(a) => a.evaluate(batch)?.into_iter().map(|v| v.map(|x| -x)).collect(),
            Expr::Binary(op, a, b) => {
                let (a, b) = (a.evaluate(batch)?, b.evaluate(batch)?);
                a.into_iter()
                    .zip(b)
                    .map(|(x, y)| {
                        let (x, y) = (x?, y?);
                        Some(match op {
                            '+' => x + y,
                            '-' => x - y,
                            '*' => x * y,
                            _ => x / y,
                        })
                    })
                    .collect()
            }
            Expr::Call(f, args) => {
                let vals = args.iter().map(|a| a.evaluate(batch)).collect::<Result<Vec<_>>>()?;
                (0..n)
                    .map(|r| {
                        if *f == Func::Coalesce {
                            return vals[0][r].filter(|x| x.is_finite()).or(vals[1][r]);
                        }
                        let x = vals[0][r]?;
                        Some(match f {
                            Func::Max => x.max(vals[1][r]?),
                            Func::Min => x.min(vals[1][r]?),
                            Func::Abs => x.abs(),
                            Func::Sqrt => x.sqrt(),
                            Func::Ln => x.ln(),
                            Func::Exp => x.exp(),
                            Func::Coalesce => unreachable!("handled above"),
                        })
                    })
                    .collect()
            }
        })
    }
}

/// Parses a formula; an error carries the character offset it points at.
pub fn parse(text: &str) -> std::result::Result<Expr, ExprError> {
    let mut p = Parser { chars: text.char_indices().collect(), pos: 0, len: text.len() };
    let e = p.sum()?;
    p.skip_ws();
    match p.peek() {
        None => Ok(e),
        Some((o, c)) => Err(ExprError::new(o, format!("unexpected `{c}`; expected an operator or the end of the formula"))),
    }
}

struct Parser {
    chars: Vec<(usize, char)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|(_, c)| c.is_whitespace()) {
            self.pos += 1;
        }
    }
    fn peek(&self) -> Option<(usize, char)> {
        self.chars.get(self.pos).copied()
    }
    fn offset(&self) -> usize {
        self.peek().map_or(self.len, |(o, _)| o)
    }
    /// sum := product (('+' | '-') product)*
    fn sum(&mut self) -> std::result::Result<Expr, ExprError> {
        self.left_assoc(['+', '-'], Self::product)
    }
    /// product := unary (('*' | '/') unary)*
    fn product(&mut self) -> std::result::Result<Expr, ExprError> {
        self.left_assoc(['*', '/'], Self::unary)
    }
    /// One level of left-associative binary operators: `operand (op operand)*`.
    fn left_assoc(&mut self, ops: [char; 2], operand: fn(&mut Self) -> std::result::Result<Expr, ExprError>) -> std::result::Result<Expr, ExprError> {
        let mut left = operand(self)?;
        loop {
            self.skip_ws();
            match self.peek() {
                Some((_, op)) if ops.contains(&op) => {
                    self.pos += 1;
                    left = Expr::Binary(op, Box::new(left), Box::new(operand(self)?));
                }
                _ => return Ok(left),
            }
        }
    }
    /// unary := '-' unary | atom
    fn unary(&mut self) -> std::result::Result<Expr, ExprError> {
        self.skip_ws();
        if let Some((_, '-')) = self.peek() {
            self.pos += 1;
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.atom()
    }
    /// atom := number | name | name '(' sum (',' sum)* ')' | '(' sum ')'
    fn atom(&mut self) -> std::result::Result<Expr, ExprError> {
        self.skip_ws();
        let start = self.offset();
        match self.peek() {
            None => Err(ExprError::new(start, "the formula ends where a number, column or '(' was expected")),
            Some((_, '(')) => {
                self.pos += 1;
                let e = self.sum()?;
                self.expect(')')?;
                Ok(e)
            }
            Some((_, c)) if c.is_ascii_digit() || c == '.' => {
                let mut s = String::new();
                while let Some((_, c)) = self.peek() {
                    let exp_sign = (c == '-' || c == '+') && s.ends_with(['e', 'E']);
                    if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exp_sign {
                        s.push(c);
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                s.parse::<f64>().map(Expr::Number).map_err(|_| ExprError::new(start, format!("`{s}` is not a number")))
            }
            Some((_, c)) if c.is_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some((_, c)) = self.peek().filter(|(_, c)| c.is_alphanumeric() || *c == '_') {
                    name.push(c);
                    self.pos += 1;
                }
                self.skip_ws();
                if let Some((_, '(')) = self.peek() {
                    let Some((func, arity)) = Func::from_name(&name) else {
                        return Err(ExprError::new(start, format!("unknown function `{name}`; the functions are max, min, abs, sqrt, ln, exp, coalesce")));
                    };
                    self.pos += 1;
                    let mut args = vec![self.sum()?];
                    self.skip_ws();
                    while let Some((_, ',')) = self.peek() {
                        self.pos += 1;
                        args.push(self.sum()?);
                        self.skip_ws();
                    }
                    self.expect(')')?;
                    if args.len() != arity {
                        return Err(ExprError::new(start, format!("`{name}` takes {arity} argument(s), got {}", args.len())));
                    }
                    return Ok(Expr::Call(func, args));
                }
                Ok(Expr::Column { name, offset: start })
            }
            Some((o, c)) => Err(ExprError::new(o, format!("unexpected `{c}`; expected a number, column or '('"))),
        }
    }
    fn expect(&mut self, want: char) -> std::result::Result<(), ExprError> {
        self.skip_ws();
        match self.peek() {
            Some((_, c)) if c == want => {
                self.pos += 1;
                Ok(())
            }
            Some((o, c)) => Err(ExprError::new(o, format!("expected `{want}`, found `{c}`"))),
            None => Err(ExprError::new(self.len, format!("expected `{want}` before the end of the formula"))),
        }
    }
}
