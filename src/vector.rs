//! The bridge to pgvector's `vector` type.
//!
//! Layout (pgvector 0.8 `src/vector.h`): varlena header (int32), dim (int16), unused (int16),
//! float4 x[dim]. Values may be toasted or compressed, so always detoast before reading.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::{FromDatum, IntoDatum};

const HEADER: usize = 8;
pub const MAX_DIM: usize = 16000;

#[derive(Debug, Clone, PartialEq)]
pub struct Vector(pub Vec<f32>);

pgrx::impl_sql_translatable!(Vector, "vector");

impl FromDatum for Vector {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _oid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        unsafe {
            let raw = pg_sys::pg_detoast_datum(datum.cast_mut_ptr());
            let base = raw as *const u8;
            let dim = *(base.add(4) as *const i16) as usize;
            let data = std::slice::from_raw_parts(base.add(HEADER) as *const f32, dim);
            Some(Vector(data.to_vec()))
        }
    }
}

impl IntoDatum for Vector {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let dim = self.0.len();
        assert!(
            (1..=MAX_DIM).contains(&dim),
            "vector dimension {dim} out of range"
        );
        let size = HEADER + 4 * dim;
        unsafe {
            let ptr = pg_sys::palloc0(size) as *mut u8;
            pgrx::set_varsize_4b(ptr as *mut pg_sys::varlena, size as i32);
            *(ptr.add(4) as *mut i16) = dim as i16;
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), ptr.add(HEADER) as *mut f32, dim);
            Some(pg_sys::Datum::from(ptr))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        vector_type_oid()
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for Vector {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe {
            arg.unbox_arg_using_from_datum()
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }
    }
}

unsafe impl BoxRet for Vector {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        match self.into_datum() {
            Some(d) => unsafe { fcinfo.return_raw_datum(d) },
            None => fcinfo.return_null(),
        }
    }
}

thread_local! {
    static VECTOR_OID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// pgvector's `vector` type, found through its extension's schema (not the caller's search_path).
pub fn vector_type_oid() -> pg_sys::Oid {
    let cached = VECTOR_OID.with(|c| c.get());
    if cached != pg_sys::InvalidOid {
        return cached;
    }
    let oid = pgrx::spi::Spi::get_one::<pg_sys::Oid>(
        "SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_extension e ON e.extnamespace = t.typnamespace \
         WHERE e.extname = 'vector' AND t.typname = 'vector'",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| pgrx::error!("pgvector's type \"vector\" was not found; is the vector extension installed?"));
    VECTOR_OID.with(|c| c.set(oid));
    oid
}

/// The schema pgvector's type lives in, for schema-qualified operators (`OPERATOR(s.<=>)`).
/// From the system caches: no query.
pub fn vector_schema() -> String {
    let typ = vector_type_oid();
    // SAFETY: syscache lookups by OID; the tuple is released before returning, the name is a
    // palloc'd C string copied out.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::TYPEOID as i32,
            pg_sys::Datum::from(typ),
        );
        if tup.is_null() {
            pgrx::error!("pgvector's type \"vector\" (oid {}) is gone", typ.to_u32());
        }
        let nsp = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup)).typnamespace;
        pg_sys::ReleaseSysCache(tup);
        let name = pg_sys::get_namespace_name(nsp);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// The array type of pgvector's `vector` (`vector[]`).
pub fn vector_array_type_oid() -> pg_sys::Oid {
    // SAFETY: a catalog lookup by OID
    unsafe { pg_sys::get_array_type(vector_type_oid()) }
}
