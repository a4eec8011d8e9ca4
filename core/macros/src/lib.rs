//! The `#[service]` attribute of bigmachine.
//!
//! Put on an inherent `impl` block, it turns the type into a bigmachine service:
//!
//! - every `async fn name(&self, ctx: &Context, arg: A) -> Result<R>` in the block becomes the
//!   method `"<Service>.name"`; a method may take a byte stream after its argument
//!   (`body: ByteStream`, sent with `Call::body`) and may return one (`Result<ByteStream>`);
//! - an `async fn init(&mut self, b: &B) -> Result<()>`, if present, runs on the machine before
//!   the service serves;
//! - the type is registered by name (no manual registration step), so a machine can rebuild a
//!   value the driver sent;
//! - a typed client, `<Type>Client`, is generated: `EchoClient::new(&machine, "Echo").echo(&arg)`.
//!   Its method takes a reference to the method's argument type; for a method taking
//!   `Archived<T>`, a `&T`; for one taking bytes (`Vec<u8>`, `Blob`, `Archived<Vec<u8>>`), a
//!   `&Vec<u8>` or a `&Blob`, whichever the caller holds (the blob's bytes are not copied). That
//!   last form is generic, so its argument's type must be known where it is called: no deref
//!   coercion (pass `&*arc`, not `&arc`) and no `&x.into()`.
//!
//! Put on a trait (tarpc's form), it declares a service interface: the methods are written as
//! `async fn`s of the same shape, and the trait gets
//!
//! - its methods rewritten to return `impl Future<Output = ...> + Send` (implementations still
//!   write plain `async fn`s), and `Send + Sync + 'static` as supertraits;
//! - `into_service(self)`, which wraps any implementation as a service for a server to dispatch
//!   to (a service its machine builds itself: nothing is registered or sent by the driver);
//! - the typed client `<Trait>Client`, as for an impl block.
//!
//! Put on an implementation of such a trait (`#[service] impl Greeter for English { ... }`), it
//! registers the type, so that the driver can install values of it on machines, as it does for
//! an impl block; the trait gives the dispatch and the client.
//!
//! Options: `#[service(crate = path)]` names the crate the expansion refers to (default
//! `::bigmachine`; crates inside the workspace use `::bigmachine_core`, and `crate` within it),
//! `#[service(vis = pub(crate))]` sets the visibility of the client (default `pub`; a trait's own
//! visibility applies to what it generates).
//!
//! Methods with another shape are refused with a compile error that says what is expected.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, Attribute, FnArg, GenericArgument, ImplItem, Item, ItemImpl, ItemTrait,
    Path, PathArguments, ReturnType, Signature, TraitItem, Type, Visibility,
};

/// Makes the methods of an `impl` block, or of a trait's implementations, callable on remote
/// machines. See the crate docs.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options {
        krate: syn::parse_quote!(::bigmachine),
        vis: None,
    };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            options.krate = meta.value()?.parse()?;
            Ok(())
        } else if meta.path.is_ident("vis") {
            options.vis = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown option; expected `crate = path` or `vis = visibility`"))
        }
    });
    parse_macro_input!(attr with parser);
    let original = TokenStream2::from(item.clone());
    let expanded = match parse_macro_input!(item as Item) {
        Item::Impl(block) => expand_impl(&options, block),
        Item::Trait(declared) => expand_trait(&options, declared),
        other => Err(syn::Error::new_spanned(
            other,
            "#[service] goes on an inherent impl block (`impl MyService { ... }`) or on a trait",
        )),
    };
    // On error, keep the user's code so the only diagnostic is ours (no cascade of unused
    // imports or missing items).
    expanded
        .unwrap_or_else(|e| {
            let error = e.into_compile_error();
            quote!(#error #original)
        })
        .into()
}

struct Options {
    krate: Path,
    vis: Option<Visibility>,
}

struct Method {
    name: syn::Ident,
    arg: Type,
    reply: Type,
    /// Whether the method takes a byte stream after its argument.
    body: bool,
    docs: Vec<Attribute>,
}

fn docs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect()
}

fn expand_impl(options: &Options, block: ItemImpl) -> syn::Result<TokenStream2> {
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &block.generics,
            "#[service] types cannot be generic: a machine must rebuild the value by type name",
        ));
    }
    let ty = &block.self_ty;
    let ident = match &**ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .map(|s| s.ident.clone())
            .ok_or_else(|| syn::Error::new_spanned(ty, "expected a type name"))?,
        _ => return Err(syn::Error::new_spanned(ty, "#[service] needs a named type")),
    };
    let k = &options.krate;
    let p = quote!(#k::__private);
    let type_name = type_name(&ident);
    let value = service_value(&p, ty, &type_name);
    if let Some((_, trait_path, _)) = &block.trait_ {
        // An implementation of a #[service] trait: the trait gives the dispatch and the
        // client; the type is registered so that the driver can send values of it. (A trait
        // that is not a #[service] trait has no `into_service`: the error points at it.)
        let into_service = quote_spanned! {trait_path.span()=>
            <#ty as #trait_path>::into_service(service)
        };
        return Ok(quote! {
            #block

            #value

            const _: () = {
                fn make(
                    value: #p::Payload,
                    _b: #p::B,
                ) -> #p::BoxFuture<'static, #p::Result<#p::Arc<dyn #p::Service>>> {
                    ::std::boxed::Box::pin(async move {
                        let service: #ty = #p::decode_value(&value)?;
                        ::core::result::Result::Ok(#into_service)
                    })
                }
                #p::inventory::submit! {
                    #p::Registration::new(<#ty as #p::ServiceValue>::TYPE_NAME, make)
                }
            };
        });
    }

    let mut methods = Vec::new();
    let mut has_init = false;
    for item in &block.items {
        if let ImplItem::Fn(f) = item {
            if f.sig.ident == "init" {
                check_init(&f.sig)?;
                has_init = true;
            } else {
                methods.push(check_method(&f.sig, &f.attrs)?);
            }
        }
    }

    let init = if has_init {
        quote!(service.init(&b).await?;)
    } else {
        quote!(let _ = b;)
    };
    let dispatch = dispatch(
        &p,
        &methods,
        &type_name,
        |name, args| quote!(self.#name(#args)),
    );
    let vis = options
        .vis
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(pub));
    let client = client(&p, &vis, &ident, &methods);

    Ok(quote! {
        #block

        #value

        const _: () = {
            fn make(
                value: #p::Payload,
                b: #p::B,
            ) -> #p::BoxFuture<'static, #p::Result<#p::Arc<dyn #p::Service>>> {
                ::std::boxed::Box::pin(async move {
                    #[allow(unused_mut)]
                    let mut service: #ty = #p::decode_value(&value)?;
                    #init
                    ::core::result::Result::Ok(#p::Arc::new(service) as #p::Arc<dyn #p::Service>)
                })
            }
            #p::inventory::submit! {
                #p::Registration::new(<#ty as #p::ServiceValue>::TYPE_NAME, make)
            }
        };

        impl #p::Service for #ty {
            fn type_name(&self) -> &'static str {
                #type_name
            }

            #dispatch
        }

        #client
    })
}

fn expand_trait(options: &Options, declared: ItemTrait) -> syn::Result<TokenStream2> {
    if !declared.generics.params.is_empty() || declared.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &declared.generics,
            "#[service] traits cannot be generic: calls are dispatched by name",
        ));
    }
    if let Some(colon) = &declared.colon_token {
        return Err(syn::Error::new_spanned(
            colon,
            "#[service] traits have no supertraits of their own (they are Send + Sync + 'static)",
        ));
    }
    if let Some(unsafety) = &declared.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "#[service] traits cannot be unsafe",
        ));
    }
    if let Some(auto) = &declared.auto_token {
        return Err(syn::Error::new_spanned(
            auto,
            "#[service] traits cannot be auto traits",
        ));
    }
    let mut methods = Vec::new();
    let mut items = Vec::new();
    for item in &declared.items {
        let TraitItem::Fn(f) = item else {
            return Err(syn::Error::new_spanned(
                item,
                "a #[service] trait holds only its methods",
            ));
        };
        if let Some(default) = &f.default {
            return Err(syn::Error::new_spanned(
                default,
                "#[service] trait methods have no default body",
            ));
        }
        methods.push(check_method(&f.sig, &f.attrs)?);
        // `async fn` becomes `fn -> impl Future + Send`, so that servers can spawn the futures.
        let mut sig = f.sig.clone();
        sig.asyncness = None;
        let output = match &sig.output {
            ReturnType::Type(_, ty) => quote!(#ty),
            ReturnType::Default => quote!(()),
        };
        sig.output = syn::parse_quote! {
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
        };
        let attrs = &f.attrs;
        items.push(quote!(#(#attrs)* #sig;));
    }

    let k = &options.krate;
    let p = quote!(#k::__private);
    let ident = &declared.ident;
    let vis = &declared.vis;
    let attrs = &declared.attrs;
    let server = format_ident!("{}Server", ident);
    let type_name = type_name(ident);
    let dispatch = dispatch(
        &p,
        &methods,
        &type_name,
        |name, args| quote!(<T as #ident>::#name(&self.0, #args)),
    );
    let client_vis = options.vis.clone().unwrap_or_else(|| vis.clone());
    let client = client(&p, &client_vis, ident, &methods);
    let server_doc = format!("An implementation of [`{ident}`] as a service (see `into_service`).");

    Ok(quote! {
        #(#attrs)*
        #vis trait #ident: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#items)*

            /// This implementation as a service a server dispatches calls to.
            fn into_service(self) -> #p::Arc<dyn #p::Service>
            where
                Self: ::core::marker::Sized,
            {
                #p::Arc::new(#server(self))
            }
        }

        #[doc = #server_doc]
        #[derive(Debug)]
        #vis struct #server<T>(T);

        impl<T: #ident> #p::Service for #server<T> {
            fn type_name(&self) -> &'static str {
                #type_name
            }

            #dispatch
        }

        #client
    })
}

/// `ServiceValue` for a service type: what the driver sends of it.
fn service_value(p: &TokenStream2, ty: &Type, type_name: &TokenStream2) -> TokenStream2 {
    quote! {
        impl #p::ServiceValue for #ty {
            const TYPE_NAME: &'static str = #type_name;

            fn encode_value(&self) -> #p::Result<#p::Payload> {
                #p::Encode::encode(self)
            }
        }
    }
}

/// The registered name of a service type or trait: its module path and name.
fn type_name(ident: &syn::Ident) -> TokenStream2 {
    quote!(::core::concat!(
        ::core::module_path!(),
        "::",
        ::core::stringify!(#ident)
    ))
}

/// The `dispatch` method of the `Service` impl; `call` calls a method of the service value with
/// the given arguments.
fn dispatch(
    p: &TokenStream2,
    methods: &[Method],
    type_name: &TokenStream2,
    call: impl Fn(&syn::Ident, TokenStream2) -> TokenStream2,
) -> TokenStream2 {
    let arms = methods.iter().map(|m| {
        let name_str = m.name.to_string();
        let arg = &m.arg;
        let reply = &m.reply;
        let body = m.body;
        let args = if m.body {
            quote!(&request.ctx, arg, body.unwrap_or_else(#p::ByteStream::empty))
        } else {
            quote!(&request.ctx, arg)
        };
        let call = call(&m.name, args);
        quote! {
            #name_str => {
                #p::check_types::<#arg, #reply>(&request, #type_name, #name_str)?;
                let mut request = request;
                let body = #p::take_body(&mut request, #body, #name_str)?;
                ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                    let arg: #arg = #p::decode_arg(&mut request)?;
                    #p::method_result(#call.await)
                }))
            }
        }
    });
    let accepts = methods.iter().map(|m| {
        let name_str = m.name.to_string();
        let (arg, reply, body) = (&m.arg, &m.reply, m.body);
        quote! {
            #name_str => #p::check_call::<#arg, #reply>(
                (arg_type, reply_type),
                (body, #body),
                #type_name,
                #name_str,
            ),
        }
    });
    quote! {
        fn accepts(
            &self,
            method: &str,
            arg_type: u64,
            reply_type: u64,
            body: bool,
        ) -> #p::Result<()> {
            match method {
                #(#accepts)*
                _ => ::core::result::Result::Err(#p::no_such_method(#type_name, method)),
            }
        }

        fn dispatch(
            self: #p::Arc<Self>,
            method: &str,
            request: #p::Request,
        ) -> #p::Result<#p::Handler> {
            match method {
                #(#arms)*
                _ => ::core::result::Result::Err(#p::no_such_method(#type_name, method)),
            }
        }
    }
}

/// The typed client `<ident>Client`.
fn client(
    p: &TokenStream2,
    vis: &Visibility,
    ident: &syn::Ident,
    methods: &[Method],
) -> TokenStream2 {
    let client = format_ident!("{}Client", ident);
    let client_doc = format!(
        "A typed client of the [`{ident}`] service on a machine. Each method returns a call \
         builder; `.await` it for the reply."
    );
    let fns = methods.iter().map(|m| {
        let (name, arg, reply, docs) = (&m.name, &m.arg, &m.reply, &m.docs);
        let name_str = name.to_string();
        match client_arg(arg) {
            ClientArg::Bytes => quote! {
                #(#docs)*
                #vis fn #name<'a, __BigmachineArg: #p::EncodeAs<#arg>>(
                    &'a self,
                    arg: &'a __BigmachineArg,
                ) -> #p::Call<'a, __BigmachineArg, #reply> {
                    self.machine.call_service(&self.service, #name_str, arg)
                }
            },
            // (Checked to be what the method reads: an `Archived` that is not bigmachine's is
            // a compile error here, not a call refused at run time.)
            ClientArg::Sent(sent, unwrapped) => {
                let check =
                    unwrapped.then(|| quote! { let arg = #p::sent_as::<#sent, #arg>(arg); });
                quote! {
                    #(#docs)*
                    #vis fn #name<'a>(&'a self, arg: &'a #sent) -> #p::Call<'a, #sent, #reply> {
                        #check
                        self.machine.call_service(&self.service, #name_str, arg)
                    }
                }
            }
        }
    });
    quote! {
        #[doc = #client_doc]
        #[derive(Debug, Clone)]
        #vis struct #client {
            machine: #p::Machine,
            service: ::std::string::String,
        }

        impl #client {
            /// A client of the service installed as `service` on `machine`.
            #vis fn new(machine: &#p::Machine, service: impl ::core::convert::Into<::std::string::String>) -> Self {
                Self { machine: machine.clone(), service: service.into() }
            }

            /// The machine this client calls.
            #vis fn machine(&self) -> &#p::Machine {
                &self.machine
            }

            #(#fns)*
        }
    }
}

/// What a typed client's method takes, by the method's argument type.
enum ClientArg<'a> {
    /// Bytes (`Vec<u8>`, `Blob`, `Archived<Vec<u8>>`): a byte vector or a `Blob`, whichever the
    /// caller holds (generic over `EncodeAs`, so the caller's type must be known).
    Bytes,
    /// This type: the argument's own, or `T` for a method taking `Archived<T>` (then `true`).
    Sent(&'a Type, bool),
}

fn client_arg(arg: &Type) -> ClientArg<'_> {
    let inner = last_generic("Archived", arg);
    let sent = inner.unwrap_or(arg);
    let is_bytes = last_generic("Vec", sent).is_some_and(|t| is_ident(t, "u8"))
        || (inner.is_none() && is_ident(sent, "Blob"));
    if is_bytes {
        ClientArg::Bytes
    } else {
        ClientArg::Sent(sent, inner.is_some())
    }
}

/// `T` of a type written `...::<name><T>`.
fn last_generic<'a>(name: &str, ty: &'a Type) -> Option<&'a Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) if args.args.len() == 1 => Some(t),
        _ => None,
    }
}

/// Whether `ty` is a path ending in `name`, without generics.
fn is_ident(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == name && s.arguments.is_empty()))
}

fn check_init(sig: &Signature) -> syn::Result<()> {
    const SHAPE: &str = "`init` must be `async fn init(&mut self, b: &B) -> Result<()>`";
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(sig.fn_token, SHAPE));
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_some() => {}
        _ => return Err(syn::Error::new(sig.ident.span(), SHAPE)),
    }
    if sig.inputs.len() != 2 {
        return Err(syn::Error::new_spanned(&sig.inputs, SHAPE));
    }
    Ok(())
}

fn check_method(sig: &Signature, attrs: &[Attribute]) -> syn::Result<Method> {
    let name = &sig.ident;
    let shape = format!(
        "service methods must be `async fn {name}(&self, ctx: &Context, arg: A) -> Result<R>` \
         (move helpers to another impl block)"
    );
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(sig.fn_token, shape));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "service methods cannot be generic: calls are dispatched by name",
        ));
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new_spanned(
                r,
                "service methods take `&self`: calls run concurrently, so use interior mutability for state",
            ))
        }
        _ => return Err(syn::Error::new(name.span(), shape)),
    }
    let typed: Vec<_> = sig
        .inputs
        .iter()
        .skip(1)
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let (ctx, arg, body) = match typed.as_slice() {
        [ctx, arg] => (ctx, arg, None),
        [ctx, arg, body] => (ctx, arg, Some(body)),
        _ => return Err(syn::Error::new_spanned(&sig.inputs, shape)),
    };
    if let Some(body) = body {
        let is_stream = matches!(&*body.ty, Type::Path(p)
            if p.path.segments.last().is_some_and(|s| s.ident == "ByteStream"));
        if !is_stream {
            return Err(syn::Error::new_spanned(
                &body.ty,
                "the parameter after the argument must be a `ByteStream` (the call's byte stream)",
            ));
        }
    }
    if !matches!(&*ctx.ty, Type::Reference(_)) {
        return Err(syn::Error::new_spanned(
            &ctx.ty,
            "the second parameter of a service method must be `&Context`",
        ));
    }
    if matches!(&*arg.ty, Type::Reference(_)) {
        return Err(syn::Error::new_spanned(
            &arg.ty,
            "the argument of a service method must be an owned type: it is decoded from the request",
        ));
    }
    let reply = match &sig.output {
        ReturnType::Type(_, ty) => result_ok_type(ty),
        ReturnType::Default => None,
    }
    .ok_or_else(|| {
        let span = match &sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => Span::call_site().located_at(name.span()),
        };
        syn::Error::new(span, "service methods must return `bigmachine::Result<R>`")
    })?;
    Ok(Method {
        name: name.clone(),
        arg: (*arg.ty).clone(),
        reply,
        body: body.is_some(),
        docs: docs(attrs),
    })
}

/// `R` of a `Result<R>` or `Result<R, E>` return type.
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}
