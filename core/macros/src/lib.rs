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
//!
//! Options: `#[service(crate = path)]` names the crate the expansion refers to (default
//! `::bigmachine`; crates inside the workspace use `::bigmachine_core`),
//! `#[service(vis = pub(crate))]` sets the client's visibility (default `pub`),
//! and `#[service(local)]` skips registration for a service that is built on the machine itself
//! rather than sent by the driver (the Supervisor).
//!
//! Methods with another shape are refused with a compile error that says what is expected.

#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, GenericArgument, ImplItem, ImplItemFn, ItemImpl, Path, PathArguments,
    ReturnType, Type, Visibility,
};

/// Makes the methods of an `impl` block callable on remote machines. See the crate docs.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options {
        krate: syn::parse_quote!(::bigmachine),
        vis: syn::parse_quote!(pub),
        local: false,
    };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            options.krate = meta.value()?.parse()?;
            Ok(())
        } else if meta.path.is_ident("local") {
            options.local = true;
            Ok(())
        } else if meta.path.is_ident("vis") {
            options.vis = meta.value()?.parse()?;
            Ok(())
        } else {
            Err(meta
                .error("unknown option; expected `crate = path`, `vis = visibility` or `local`"))
        }
    });
    parse_macro_input!(attr with parser);
    let original = TokenStream2::from(item.clone());
    let block = parse_macro_input!(item as ItemImpl);
    // On error, keep the user's code so the only diagnostic is ours (no cascade of unused
    // imports or missing items).
    expand(&options, block)
        .unwrap_or_else(|e| {
            let error = e.into_compile_error();
            quote!(#error #original)
        })
        .into()
}

struct Options {
    krate: Path,
    vis: Visibility,
    local: bool,
}

struct Method {
    name: syn::Ident,
    arg: Type,
    reply: Type,
    /// Whether the method takes a byte stream after its argument.
    body: bool,
    docs: Vec<syn::Attribute>,
}

fn expand(options: &Options, block: ItemImpl) -> syn::Result<TokenStream2> {
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "#[service] goes on an inherent impl block (`impl MyService { ... }`), not a trait impl",
        ));
    }
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

    let mut methods = Vec::new();
    let mut has_init = false;
    for item in &block.items {
        if let ImplItem::Fn(f) = item {
            if f.sig.ident == "init" {
                check_init(f)?;
                has_init = true;
            } else {
                methods.push(check_method(f)?);
            }
        }
    }

    let k = &options.krate;
    let p = quote!(#k::__private);
    let names: Vec<_> = methods.iter().map(|m| &m.name).collect();
    let name_strs: Vec<_> = methods.iter().map(|m| m.name.to_string()).collect();
    let args: Vec<_> = methods.iter().map(|m| &m.arg).collect();
    let replies: Vec<_> = methods.iter().map(|m| &m.reply).collect();
    let docs: Vec<_> = methods.iter().map(|m| &m.docs).collect();
    let calls: Vec<_> = methods
        .iter()
        .map(|m| {
            let name = &m.name;
            if m.body {
                quote!(self.#name(&request.ctx, arg, body.unwrap_or_else(#p::ByteStream::empty)).await)
            } else {
                quote!(self.#name(&request.ctx, arg).await)
            }
        })
        .collect();
    let bodies: Vec<_> = methods.iter().map(|m| m.body).collect();
    let init = if has_init {
        quote!(service.init(&b).await?;)
    } else {
        quote!(let _ = b;)
    };
    let client = format_ident!("{}Client", ident);
    let client_doc = format!(
        "A typed client of the [`{ident}`] service on a machine. Each method returns a call \
         builder; `.await` it for the reply."
    );
    let vis = &options.vis;
    let type_name = quote!(::core::concat!(
        ::core::module_path!(),
        "::",
        ::core::stringify!(#ident)
    ));
    let registration = if options.local {
        quote!()
    } else {
        quote! {
            impl #p::ServiceValue for #ty {
                const TYPE_NAME: &'static str = #type_name;

                fn encode_value(&self) -> #p::Result<#p::Payload> {
                    #p::Encode::encode(self)
                }
            }

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
        }
    };

    Ok(quote! {
        #block

        #registration

        impl #p::Service for #ty {
            fn type_name(&self) -> &'static str {
                #type_name
            }

            fn dispatch(
                self: #p::Arc<Self>,
                method: &str,
                request: #p::Request,
            ) -> #p::Result<#p::Handler> {
                match method {
                    #(
                        #name_strs => {
                            #p::check_types::<#args, #replies>(
                                &request,
                                #type_name,
                                #name_strs,
                            )?;
                            let mut request = request;
                            let body = #p::take_body(&mut request, #bodies, #name_strs)?;
                            ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                                let arg: #args = #p::decode_arg(&mut request)?;
                                #p::method_result(#calls)
                            }))
                        }
                    )*
                    _ => ::core::result::Result::Err(#p::no_such_method(
                        #type_name,
                        method,
                    )),
                }
            }
        }

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

            #(
                #(#docs)*
                #vis fn #names<'a>(&'a self, arg: &'a #args) -> #p::Call<'a, #args, #replies> {
                    self.machine.call_service(&self.service, #name_strs, arg)
                }
            )*
        }
    })
}

fn check_init(f: &ImplItemFn) -> syn::Result<()> {
    const SHAPE: &str = "`init` must be `async fn init(&mut self, b: &B) -> Result<()>`";
    if f.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(f.sig.fn_token, SHAPE));
    }
    match f.sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_some() => {}
        _ => return Err(syn::Error::new(f.sig.ident.span(), SHAPE)),
    }
    if f.sig.inputs.len() != 2 {
        return Err(syn::Error::new_spanned(&f.sig.inputs, SHAPE));
    }
    Ok(())
}

fn check_method(f: &ImplItemFn) -> syn::Result<Method> {
    let name = &f.sig.ident;
    let shape = format!(
        "service methods must be `async fn {name}(&self, ctx: &Context, arg: A) -> Result<R>` \
         (move helpers to another impl block)"
    );
    if f.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(f.sig.fn_token, shape));
    }
    if !f.sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &f.sig.generics,
            "service methods cannot be generic: calls are dispatched by name",
        ));
    }
    match f.sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new_spanned(
                r,
                "service methods take `&self`: calls run concurrently, so use interior mutability for state",
            ))
        }
        _ => return Err(syn::Error::new(name.span(), shape)),
    }
    let typed: Vec<_> = f
        .sig
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
        _ => return Err(syn::Error::new_spanned(&f.sig.inputs, shape)),
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
    let reply = match &f.sig.output {
        ReturnType::Type(_, ty) => result_ok_type(ty),
        ReturnType::Default => None,
    }
    .ok_or_else(|| {
        let span = match &f.sig.output {
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
        docs: f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
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
