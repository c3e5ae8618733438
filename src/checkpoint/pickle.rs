//! A strict pickle VM for the subset of protocol 2 that `torch.save` emits for a state
//! dict: enough to read the recipe's `fc.weight` / `fc.bias`, and nothing that could run code.

use std::collections::HashMap;

/// `persistent_load(('storage', torch.<Type>Storage, key, location, numel))`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StorageRef {
    pub(super) dtype: String,
    pub(super) key: String,
    pub(super) numel: usize,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TensorRef {
    pub(super) storage: StorageRef,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// The callables a state dict pickle may name with GLOBAL.
#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    /// `torch.FloatStorage` and the other typed storage classes, by name.
    StorageType(String),
}

/// Pickle objects. Containers refer to other objects by index into the VM's heap,
/// so a memoised dict that is filled later is the same dict when fetched again,
/// as in Python.
#[derive(Clone, Debug, PartialEq)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// A strict pickle VM for the subset of protocol 2 that torch.save emits for a
/// state dict. `MARK` positions live on their own stack, as in CPython.
struct Vm<'a> {
    code: &'a [u8],
    pos: usize,
    heap: Vec<Obj>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u32, usize>,
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let code: &'a [u8] = self.code;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= code.len())
            .ok_or("pickle is truncated")?;
        let bytes = &code[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.code[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle is truncated")?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| "GLOBAL name is not UTF-8")?;
        self.pos += len + 1;
        Ok(s)
    }

    fn push(&mut self, obj: Obj) {
        self.heap.push(obj);
        self.stack.push(self.heap.len() - 1);
    }

    fn pop(&mut self) -> Result<usize, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle pops an empty stack".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<usize>, String> {
        let mark = self.marks.pop().ok_or("pickle uses a MARK it never set")?;
        if mark > self.stack.len() {
            return Err("pickle MARK is below the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<usize, String> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "pickle reads an empty stack".to_string())
    }

    fn string(&mut self, len: usize) -> Result<(), String> {
        let s = std::str::from_utf8(self.take(len)?)
            .map_err(|_| "pickle string is not UTF-8")?
            .to_string();
        self.push(Obj::Str(s));
        Ok(())
    }

    fn tuple(&mut self, items: Vec<usize>) {
        self.push(Obj::Tuple(items));
    }

    fn int(&self, i: usize, what: &str) -> Result<usize, String> {
        match self.heap[i] {
            Obj::Int(v) if v >= 0 => Ok(v as usize),
            ref other => Err(format!(
                "{what} is {other:?}, expected a non-negative integer"
            )),
        }
    }

    fn ints(&self, i: usize, what: &str) -> Result<Vec<usize>, String> {
        match &self.heap[i] {
            Obj::Tuple(items) => items.iter().map(|&j| self.int(j, what)).collect(),
            other => Err(format!("{what} is {other:?}, expected a tuple of integers")),
        }
    }

    fn str(&self, i: usize, what: &str) -> Result<String, String> {
        match &self.heap[i] {
            Obj::Str(s) => Ok(s.clone()),
            other => Err(format!("{what} is {other:?}, expected a string")),
        }
    }

    fn run(&mut self) -> Result<usize, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} is unknown"));
                    }
                }
                b'.' => return self.pop(),
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    let g = match (module, name) {
                        ("collections", "OrderedDict") => Global::OrderedDict,
                        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
                        ("torch", n) if n.ends_with("Storage") => Global::StorageType(n.to_string()),
                        _ => {
                            return Err(format!(
                                "calls {module}.{name}, which a state dict does not: save model.state_dict(), not the model or a training snapshot"
                            ))
                        }
                    };
                    self.push(Obj::Global(g));
                }
                b'q' | b'r' => {
                    let idx = if op == b'q' { self.u8()? as u32 } else { self.u32()? };
                    let top = self.top()?;
                    self.memo.insert(idx, top);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let obj = *self.memo.get(&idx).ok_or_else(|| format!("pickle reads memo {idx} before writing it"))?;
                    self.stack.push(obj);
                }
                b'}' => self.push(Obj::Dict(Vec::new())),
                b']' => self.push(Obj::List(Vec::new())),
                b')' => self.tuple(Vec::new()),
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle builds a tuple from an empty stack".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.tuple(items);
                }
                b'X' => {
                    let len = self.u32()? as usize;
                    self.string(len)?;
                }
                0x8c => {
                    let len = self.u8()? as usize;
                    self.string(len)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Obj::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
                    self.push(Obj::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(format!("pickle integer of {n} bytes is too large"));
                    }
                    let bytes = self.take(n)?;
                    // Little-endian two's complement: sign-extend from the top byte.
                    let fill = if bytes.last().is_some_and(|&b| b >= 0x80) { 0xff } else { 0 };
                    let mut full = [fill; 8];
                    full[..n].copy_from_slice(bytes);
                    self.push(Obj::Int(i64::from_le_bytes(full)));
                }
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                b'N' => self.push(Obj::None),
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(Obj::Storage(storage));
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let obj = self.reduce(func, args)?;
                    self.push(obj);
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let value = self.pop()?;
                    self.append(vec![value])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'b' => {
                    // OrderedDict state: the state dict's `_metadata` attribute
                    // (module versions), which a head has no use for.
                    let state = self.pop()?;
                    let target = self.top()?;
                    match (&self.heap[target], &self.heap[state]) {
                        (Obj::Dict(_), Obj::Dict(_) | Obj::None) => {}
                        (t, _) => return Err(format!("pickle BUILD on {t:?}, which a state dict does not have")),
                    }
                }
                _ => {
                    return Err(format!(
                        "pickle opcode 0x{op:02x} at byte {} is not one torch.save uses for a state dict: save model.state_dict()",
                        self.pos - 1
                    ))
                }
            }
        }
    }

    fn persistent_load(&self, pid: usize) -> Result<StorageRef, String> {
        let Obj::Tuple(items) = &self.heap[pid] else {
            return Err(format!(
                "persistent id is {:?}, expected a tuple",
                self.heap[pid]
            ));
        };
        let [tag, ty, key, _location, numel] = items.as_slice() else {
            return Err(format!(
                "persistent id has {} fields, expected 5",
                items.len()
            ));
        };
        if self.str(*tag, "persistent id tag")? != "storage" {
            return Err("persistent id is not a storage".into());
        }
        let Obj::Global(Global::StorageType(dtype)) = &self.heap[*ty] else {
            return Err(format!(
                "storage type is {:?}, expected torch.<Type>Storage",
                self.heap[*ty]
            ));
        };
        Ok(StorageRef {
            dtype: dtype.clone(),
            key: self.str(*key, "storage key")?,
            numel: self.int(*numel, "storage size")?,
        })
    }

    fn reduce(&self, func: usize, args: usize) -> Result<Obj, String> {
        let Obj::Tuple(args) = &self.heap[args] else {
            return Err(format!(
                "REDUCE arguments are {:?}, expected a tuple",
                self.heap[args]
            ));
        };
        match &self.heap[func] {
            Obj::Global(Global::OrderedDict) if args.is_empty() => Ok(Obj::Dict(Vec::new())),
            Obj::Global(Global::RebuildTensorV2) if (6..=7).contains(&args.len()) => {
                let Obj::Storage(storage) = &self.heap[args[0]] else {
                    return Err(format!("tensor storage is {:?}", self.heap[args[0]]));
                };
                Ok(Obj::Tensor(TensorRef {
                    storage: storage.clone(),
                    offset: self.int(args[1], "storage offset")?,
                    size: self.ints(args[2], "tensor size")?,
                    stride: self.ints(args[3], "tensor stride")?,
                }))
            }
            other => Err(format!(
                "REDUCE calls {other:?} with {} arguments, which a state dict does not",
                args.len()
            )),
        }
    }

    fn set_items(&mut self, items: Vec<usize>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        let target = self.top()?;
        let Obj::Dict(entries) = &mut self.heap[target] else {
            return Err(format!("SETITEM on {:?}", self.heap[target]));
        };
        entries.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn append(&mut self, items: Vec<usize>) -> Result<(), String> {
        let target = self.top()?;
        let Obj::List(list) = &mut self.heap[target] else {
            return Err(format!("APPEND on {:?}", self.heap[target]));
        };
        list.extend(items);
        Ok(())
    }
}

/// Runs the pickle and returns the state dict's (name, tensor) pairs in order.
pub(super) fn unpickle_state_dict(code: &[u8]) -> Result<Vec<(String, TensorRef)>, String> {
    let mut vm = Vm {
        code,
        pos: 0,
        heap: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = vm.run()?;
    let Obj::Dict(entries) = &vm.heap[root] else {
        return Err(format!("holds {:?}, not a state dict", vm.heap[root]));
    };
    entries
        .iter()
        .map(|&(k, v)| {
            let name = vm.str(k, "state dict key")?;
            match &vm.heap[v] {
                Obj::Tensor(t) => Ok((name, t.clone())),
                other => Err(format!(
                    "state dict entry {name} is {other:?}, not a tensor"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickle_vm_refuses_what_a_state_dict_never_holds() {
        let whole_model = b"\x80\x02cmymodule\nModel\nq\x00).";
        assert!(unpickle_state_dict(whole_model)
            .unwrap_err()
            .contains("calls mymodule.Model"));
        let float = b"\x80\x02G?\xf0\x00\x00\x00\x00\x00\x00.";
        assert!(unpickle_state_dict(float)
            .unwrap_err()
            .contains("opcode 0x47"));
        let truncated = b"\x80\x02X\x10\x00\x00\x00abc";
        assert!(unpickle_state_dict(truncated)
            .unwrap_err()
            .contains("truncated"));
        let not_dict = b"\x80\x02K\x05.";
        assert!(unpickle_state_dict(not_dict)
            .unwrap_err()
            .contains("not a state dict"));
        let negative = b"\x80\x02\x8a\x02\x00\xff.";
        let mut vm = Vm {
            code: negative,
            pos: 0,
            heap: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        };
        let i = vm.run().unwrap();
        assert_eq!(vm.heap[i], Obj::Int(-256));
    }
}
