//! The words name matching knows: synonyms and abbreviations (English and six other
//! languages), stop words, generic tokens, expansions and unit suffixes.

/// Abbreviations, synonyms and common words of other languages (German, French, Spanish,
/// Italian, Portuguese, Dutch), each mapped to one canonical English token.
pub(super) const SYNONYMS: &[(&str, &[&str])] = &[
    (
        "id",
        &[
            "id",
            "identifier",
            "ident",
            "key",
            "pk",
            "uid",
            "guid",
            "uuid",
            "ref",
            "reference",
            "kennung",
        ],
    ),
    (
        "number",
        &[
            "number", "num", "no", "nbr", "nr", "numero", "nummer", "nro", "num",
        ],
    ),
    (
        "email",
        &[
            "email",
            "mail",
            "emailaddress",
            "e_mail",
            "courriel",
            "correo",
            "posta",
        ],
    ),
    (
        "name",
        &[
            "name",
            "nm",
            "fullname",
            "title",
            "nombre",
            "nome",
            "naam",
            "bezeichnung",
            "libelle",
        ],
    ),
    (
        "first",
        &[
            "first",
            "given",
            "fname",
            "forename",
            "firstname",
            "givenname",
            "vorname",
            "prenom",
            "prénom",
            "voornaam",
            "primeiro",
        ],
    ),
    (
        "last",
        &[
            "last",
            "family",
            "surname",
            "lname",
            "lastname",
            "familyname",
            "nachname",
            "familienname",
            "nom",
            "apellido",
            "apellidos",
            "cognome",
            "sobrenome",
            "achternaam",
        ],
    ),
    (
        "customer",
        &[
            "customer",
            "cust",
            "client",
            "buyer",
            "purchaser",
            "kunde",
            "cliente",
            "klant",
            "consumer",
            "shopper",
        ],
    ),
    (
        "employee",
        &[
            "employee",
            "emp",
            "staff",
            "personnel",
            "pers",
            "worker",
            "mitarbeiter",
            "empleado",
            "employe",
            "dipendente",
        ],
    ),
    (
        "order",
        &[
            "order",
            "ord",
            "purchase",
            "bestellung",
            "commande",
            "pedido",
            "ordine",
        ],
    ),
    (
        "quantity",
        &[
            "quantity", "qty", "qnty", "count", "cnt", "units", "pieces", "menge", "anzahl",
            "quantite", "cantidad", "quantita",
        ],
    ),
    (
        "amount",
        &[
            "amount", "amt", "total", "sum", "value", "betrag", "montant", "importe", "valor",
            "importo",
        ],
    ),
    (
        "price",
        &[
            "price", "cost", "preis", "prix", "precio", "prezzo", "preco", "rate", "fee",
        ],
    ),
    (
        "salary",
        &[
            "salary",
            "wage",
            "pay",
            "gehalt",
            "lohn",
            "salaire",
            "salario",
            "stipendio",
        ],
    ),
    (
        "date",
        &["date", "dt", "day", "datum", "fecha", "data", "dte"],
    ),
    (
        "timestamp",
        &[
            "timestamp",
            "ts",
            "time",
            "datetime",
            "at",
            "when",
            "zeit",
            "heure",
            "hora",
            "tstamp",
        ],
    ),
    (
        "created",
        &[
            "created",
            "creation",
            "create",
            "placed",
            "opened",
            "signup",
            "signed",
            "registered",
            "registration",
            "joined",
            "join",
            "enrolled",
            "since",
            "alta",
            "erstellt",
            "inscription",
        ],
    ),
    (
        "updated",
        &["updated", "modified", "changed", "update", "geandert"],
    ),
    (
        "address",
        &[
            "address",
            "addr",
            "adr",
            "adresse",
            "direccion",
            "indirizzo",
            "endereco",
        ],
    ),
    (
        "street",
        &[
            "street", "str", "strasse", "straße", "rue", "calle", "via", "rua",
        ],
    ),
    (
        "city",
        &[
            "city",
            "town",
            "locality",
            "municipality",
            "ville",
            "ciudad",
            "stadt",
            "ort",
            "citta",
            "cidade",
            "plaats",
        ],
    ),
    (
        "latitude",
        &["latitude", "lat", "latitud", "breite", "breitengrad"],
    ),
    (
        "longitude",
        &[
            "longitude",
            "lon",
            "lng",
            "long",
            "longitud",
            "laenge",
            "laengengrad",
        ],
    ),
    (
        "region",
        &[
            "region",
            "province",
            "county",
            "prefecture",
            "bundesland",
            "provincia",
            "departement",
        ],
    ),
    (
        "country",
        &[
            "country", "cntry", "nation", "ctry", "land", "pays", "pais", "paese",
        ],
    ),
    (
        "postal",
        &[
            "postal",
            "zip",
            "postcode",
            "zipcode",
            "plz",
            "postleitzahl",
            "cp",
            "cap",
        ],
    ),
    (
        "phone",
        &[
            "phone",
            "tel",
            "telephone",
            "mobile",
            "cell",
            "telefon",
            "telefono",
            "telefone",
            "handy",
            "fon",
        ],
    ),
    (
        "description",
        &[
            "description",
            "desc",
            "descr",
            "beschreibung",
            "descripcion",
            "descrizione",
        ],
    ),
    (
        "comment",
        &[
            "comment",
            "comments",
            "note",
            "notes",
            "remark",
            "remarks",
            "memo",
            "bemerkung",
            "commentaire",
            "comentario",
        ],
    ),
    (
        "status",
        &["status", "state", "stat", "estado", "etat", "zustand"],
    ),
    (
        "weight",
        &["weight", "wt", "wgt", "mass", "gewicht", "poids", "peso"],
    ),
    (
        "birth",
        &[
            "birth",
            "born",
            "birthday",
            "geburt",
            "geburts",
            "naissance",
            "nacimiento",
            "nascita",
        ],
    ),
    (
        "gender",
        &["gender", "sex", "geschlecht", "sexe", "sexo", "genre"],
    ),
    (
        "department",
        &[
            "department",
            "dept",
            "dep",
            "abteilung",
            "departamento",
            "division",
            "unit",
        ],
    ),
    (
        "active",
        &[
            "active", "enabled", "aktiv", "actif", "activo", "attivo", "ativo",
        ],
    ),
    (
        "consent",
        &[
            "consent",
            "optin",
            "opt",
            "subscribed",
            "newsletter",
            "einwilligung",
        ],
    ),
    (
        "doctor",
        &[
            "doctor",
            "physician",
            "attending",
            "dr",
            "provider",
            "clinician",
            "arzt",
        ],
    ),
    (
        "transaction",
        &["transaction", "txn", "trx", "trans", "tx", "buchung"],
    ),
    (
        "account",
        &["account", "acct", "acc", "konto", "cuenta", "compte"],
    ),
    (
        "merchant",
        &["merchant", "mrch", "vendor", "seller", "payee", "haendler"],
    ),
    (
        "currency",
        &["currency", "curr", "ccy", "wahrung", "devise", "moneda"],
    ),
    ("gift", &["gift", "present"]),
    ("diagnosis", &["diagnosis", "dx", "diag", "diagnose"]),
    ("is", &["is", "has", "flag"]),
    (
        "percent",
        &["percent", "pct", "percentage", "prozent", "pourcentage"],
    ),
    (
        "product",
        &[
            "product", "prod", "item", "sku", "article", "artikel", "produit", "producto",
            "articolo",
        ],
    ),
    (
        "category",
        &[
            "category",
            "cat",
            "type",
            "kind",
            "class",
            "kategorie",
            "categorie",
            "categoria",
            "tipo",
            "typ",
        ],
    ),
    (
        "user",
        &["user", "usr", "login", "benutzer", "utilisateur", "usuario"],
    ),
    (
        "company",
        &[
            "company",
            "firm",
            "organisation",
            "organization",
            "org",
            "firma",
            "entreprise",
            "empresa",
            "societe",
        ],
    ),
    ("level", &["level", "lvl", "lev", "niveau", "nivel"]),
    ("tier", &["tier", "grade", "rank"]),
    ("year", &["year", "yr", "yyyy", "jahr", "annee", "ano"]),
];

/// Words that carry no meaning for matching.
pub(super) const STOP_WORDS: &[&str] = &[
    "the", "of", "on", "in", "a", "an", "to", "for", "by", "de", "du", "la", "le", "des", "del",
    "von", "der", "die", "das", "el", "da", "do",
];

/// Tokens that many columns share: a match on them alone is weak evidence.
pub(super) const GENERIC: &[&str] = &[
    "id",
    "number",
    "name",
    "date",
    "code",
    "value",
    "timestamp",
    "amount",
    "category",
    "is",
    // Linked-data exports suffix every column with these (`genreLabel`, `religionLabel`).
    "label",
    "type",
];

/// Abbreviations that stand for several words.
pub(super) const EXPANSIONS: &[(&str, &[&str])] = &[
    ("ltv", &["lifetime", "value"]),
    ("clv", &["lifetime", "value"]),
    ("dob", &["birth", "date"]),
    ("ssn", &["social", "security", "number"]),
    ("pw", &["password"]),
    ("qty", &["quantity"]),
    ("mrn", &["medical", "record", "number"]),
];

/// Unit suffixes that say how a value is measured, not what it is.
pub const UNITS: &[&str] = &[
    "kg", "lb", "lbs", "g", "cents", "cent", "usd", "eur", "pct", "km", "mi", "m", "cm", "mm", "s",
    "ms", "sec", "secs", "c", "f",
];
