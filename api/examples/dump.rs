fn main() {
    let k = capstan_api::kinds::by_name(&std::env::args().nth(1).unwrap()).unwrap();
    println!("{}", capstan_api::schema::render(&capstan_api::schema::kind_schema(k)));
}
