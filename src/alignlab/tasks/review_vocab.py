"""Word lists and sentence templates for the synthetic movie reviews of the `sentiment` task.

Two kinds of lists live here:

- NEUTRAL slot fillers (titles, names, roles, genres, premises, places, times). None of their
  words carries a VADER valence, so the opening words of a review say nothing about its sentiment
  and the gold reward of a continuation comes only from the words the model chose to write.
  `neutral_words()` lists them so a test can hold that promise.
- TEMPLATES grouped by mood (positive, negative, mixed, neutral facts). A template is plain text
  with `{slot}` fields; every field is filled independently from `SLOTS`.

Adjectives come in graded strengths (mild, strong) on both sides, and the templates use
intensifiers, negations ("not bad", "never boring", "not worth it") and contrasts ("but",
"although"), as real reviews do.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Neutral slot fillers: no word below is in the VADER lexicon.
# ---------------------------------------------------------------------------------------------

TITLE_ADJECTIVES = [
    "silent", "last", "northern", "paper", "glass", "iron", "distant", "second", "electric",
    "hidden", "quiet", "golden", "long", "amber", "wooden", "seventh", "little", "endless",
    "crimson", "hollow", "painted", "frozen", "midnight", "copper", "velvet", "burning", "open",
    "secret", "sunken", "wild", "southern", "floating", "tall", "narrow", "blue",
]
TITLE_NOUNS = [
    "harbor", "orchard", "river", "signal", "garden", "lighthouse", "station", "mirror",
    "compass", "tide", "engine", "frontier", "island", "road", "letter", "window", "bridge",
    "tower", "forest", "valley", "machine", "circus", "museum", "hotel", "village", "planet",
    "canyon", "mountain", "train", "lantern", "harvest", "summer", "winter", "map", "clock",
    "horizon", "theater", "archive", "kingdom", "carousel", "coast", "orbit", "meadow",
]
TITLE_PATTERNS = [
    "the {t_adj} {t_noun}",
    "the {t_adj} {t_noun}",
    "the {t_noun}",
    "{t_noun} of the {t_noun}",
    "a {t_adj} {t_noun}",
    "{first_name}'s {t_noun}",
    "the {t_noun} and the {t_noun}",
    "beyond the {t_noun}",
]

FIRST_NAMES = [
    "anna", "marco", "lena", "oscar", "nadia", "felix", "clara", "victor", "maya", "julian",
    "sofia", "hugo", "iris", "theo", "elena", "rafael", "greta", "simon", "mira", "leon",
    "ada", "tomas", "ruth", "emil", "nora", "paul", "vera", "dean", "ingrid", "omar",
]
LAST_NAMES = [
    "hart", "moreau", "linden", "castillo", "reyes", "novak", "brandt", "okafor", "sato",
    "keller", "dalton", "ferreira", "holm", "quinn", "marsh", "petrov", "vance", "ashby",
    "lindqvist", "moreno", "whitaker", "rossi", "beaumont", "kowalski", "tanaka", "hale",
]

ROLES = [
    "the detective", "the young teacher", "the old captain", "the mother", "the sheriff",
    "the boxer", "the journalist", "the scientist", "the pilot", "the older sister",
    "the lawyer", "the painter", "the chef", "the mayor", "the astronaut", "the father",
    "the stranger", "the musician", "the doctor", "the coach", "the banker", "the inventor",
]

# (singular, plural): plural is needed for "one of the best westerns".
GENRES = [
    ("drama", "dramas"), ("mystery", "mysteries"), ("western", "westerns"),
    ("musical", "musicals"), ("documentary", "documentaries"), ("heist movie", "heist movies"),
    ("biopic", "biopics"), ("family film", "family films"), ("road movie", "road movies"),
    ("sports movie", "sports movies"), ("period piece", "period pieces"),
    ("science fiction film", "science fiction films"), ("animated film", "animated films"),
    ("space opera", "space operas"), ("detective story", "detective stories"),
    ("courtroom drama", "courtroom dramas"), ("spy film", "spy films"),
    ("coming of age story", "coming of age stories"), ("monster movie", "monster movies"),
    ("time travel movie", "time travel movies"), ("indie film", "indie films"),
]

PREMISES = [
    "a family who moves to the coast", "two brothers on a road trip",
    "a small town detective", "a band on tour", "a pilot stranded on an island",
    "a teacher in a mountain village", "a chess player and her coach",
    "a robot who learns to paint", "an old sailor and his daughter",
    "a night at a museum", "three cousins in the city", "a journalist chasing a story",
    "a chef who opens a restaurant", "a boxer and his trainer", "twins separated at birth",
    "a crew on a long space mission", "a mayor running for office", "a girl and her horse",
    "a lawyer and an unusual case", "a musician going back home", "a town with a secret",
    "a scientist who builds a time machine", "a dog who finds his way home",
    "a couple who buy an old hotel", "a spy in a foreign city", "a farmer and a drought",
    "a young painter in paris", "a crew of divers", "a stranger who arrives in a village",
    "a father and son building a boat",
]

PLACES = [
    "paris", "a small town", "the desert", "new york", "a mountain village", "the arctic",
    "an old hotel", "a fishing town", "the nineteen seventies", "tokyo", "a space station",
    "rome", "the suburbs", "a ship at sea", "the far north", "a lighthouse", "berlin",
    "a boarding school", "the outback", "a border town",
]

WHENS = [
    "last night", "last weekend", "yesterday", "on friday", "this afternoon",
    "over christmas", "on a long flight", "at a small film club", "at the local cinema",
    "on tv", "on a sunday evening", "at a late show", "for the second time", "on saturday",
    "after work", "on streaming", "at the drive in",
]
COMPANY = [
    "with my sister", "with my parents", "with a neighbor", "by myself", "with my kids",
    "with my husband", "with my wife", "with my roommate", "with my brother", "with my dad",
    "with my mom", "with some coworkers",
]
RELATIVES = ["wife", "husband", "sister", "brother", "dad", "mom", "roommate", "son", "daughter"]
DURATIONS = [
    "ninety minutes", "a hundred minutes", "two hours", "a hundred and ten minutes",
    "eighty minutes", "three hours", "two and a half hours",
]

# Singular aspects take "is"; plural ones take "are".
ASPECTS = [
    "acting", "plot", "script", "soundtrack", "score", "cinematography", "pacing", "dialogue",
    "ending", "editing", "direction", "story", "lead performance", "camera work", "final act",
    "first half", "music", "set design", "screenplay", "cast", "effects work", "opening scene",
    "main character", "lighting", "costume design", "second half",
]
ASPECTS_PLURAL = [
    "characters", "effects", "action scenes", "performances", "gags", "songs", "visuals",
    "chase scenes", "costumes", "side characters", "twists", "locations", "flashbacks",
]

# ---------------------------------------------------------------------------------------------
# Sentiment words, graded. Mild words nudge the score; strong ones move it a lot.
# ---------------------------------------------------------------------------------------------

POS_ADJ_MILD = [
    "decent", "solid", "fine", "warm", "fresh", "engaging", "smart", "nice", "good",
    "enjoyable", "funny", "watchable",
]
POS_ADJ_STRONG = [
    "great", "wonderful", "excellent", "brilliant", "beautiful", "superb", "fantastic",
    "amazing", "stunning", "delightful", "terrific", "gorgeous", "entertaining", "powerful",
    "hilarious", "lovely", "perfect", "impressive", "remarkable", "outstanding", "magnificent",
    "inspired", "exciting", "moving", "gripping", "touching", "memorable", "masterful",
    "charming", "pleasant", "sweet", "clever",
]
NEG_ADJ_MILD = [
    "dull", "weak", "slow", "forgettable", "messy", "predictable", "confusing", "clumsy",
    "lazy", "tired", "flawed", "sappy", "awkward", "frustrating", "uneven", "unpleasant",
]
NEG_ADJ_STRONG = [
    "terrible", "awful", "horrible", "boring", "bad", "poor", "painful", "stupid", "dreadful",
    "lame", "pathetic", "ugly", "annoying", "ridiculous", "pointless", "disappointing",
    "unwatchable", "miserable", "embarrassing", "hopeless", "insulting", "depressing",
    "worthless", "dreary", "irritating", "dumb", "horrendous", "lousy", "disgusting",
    "joyless", "horrid", "offensive",
]
INTENSIFIERS = [
    "very", "really", "truly", "absolutely", "quite", "so", "incredibly", "extremely",
    "pretty", "genuinely", "utterly", "rather",
]
POS_NOUNS = [
    "a masterpiece", "a gem", "a delight", "a triumph", "a joy to watch", "a real treat",
    "a pleasant surprise", "a breath of fresh air", "a crowd pleaser", "a small miracle",
]
NEG_NOUNS = [
    "a disaster", "a mess", "a waste of time", "a letdown", "a chore to sit through",
    "a failure", "a total bore", "a huge disappointment", "a bad joke", "a tired mess",
]
POS_PAST_VERBS = ["loved", "enjoyed", "liked", "adored", "appreciated", "admired"]
NEG_PAST_VERBS = ["hated", "disliked", "regretted", "resented", "despised"]

# ---------------------------------------------------------------------------------------------
# Openings. They are all neutral: the same opening continues positively or negatively.
# A "subject" opening is a noun phrase that a predicate follows ("this movie" + " is great");
# an "event" opening is a clause about watching it ("i watched the last harbor last night").
# ---------------------------------------------------------------------------------------------

SUBJECT_OPENINGS = [
    "this movie", "this movie", "this film", "this film", "the film", "the movie",
    "this {genre}", "the director's latest {genre}", "the director's latest", "{title}",
    "{title}", "{actor}'s new {genre}", "the new {genre} from {actor}", "the sequel to {title}",
    "this little {genre}", "the remake of {title}", "{title}, the new {genre} starring {actor},",
    "the latest {genre} from {actor}", "this new {genre}", "the first film by {actor}",
]
EVENT_OPENINGS = [
    "i watched {title} {when}", "i watched this movie {when}", "i watched this film {company}",
    "i went to see {title} {when}", "i went to see this movie {company}",
    "my friends and i saw {title} {when}", "my friends and i went to see this {genre}",
    "we rented {title} {when}", "i finally got around to watching {title}",
    "i saw this {genre} {when}", "my {relative} and i watched {title} {when}",
    "i caught {title} {when}", "i rented this {genre} {when}",
    "i went into {title} knowing nothing about it", "i watched this {genre} {company} {when}",
    "i saw {title} {company} {when}", "so i finally watched {title}",
    "we went to see the new {genre} {when}", "i watched the director's latest {when}",
]

# Neutral predicates that can follow a subject opening (a purely factual first sentence).
NEUTRAL_PREDICATES = [
    "is a {genre} about {premise}", "stars {actor} as {role}", "follows {premise}",
    "runs about {duration}", "is set in {place}", "is adapted from a book by {actor}",
    "tells the story of {premise}", "is a {genre} set in {place}",
]

# ---------------------------------------------------------------------------------------------
# Mood templates.
# ---------------------------------------------------------------------------------------------

# After a subject opening (present tense).
POSITIVE_PREDICATES = [
    "is {intens} {pos_strong}", "is {pos_strong}", "is {pos_noun}",
    "is one of the best {genres} i have seen in years", "is a {pos_strong} {genre}",
    "is a {pos_mild} {genre} with a {pos_strong} {aspect}", "is {pos_strong} from start to finish",
    "is never boring", "is not bad at all", "is easily the best film of the year",
    "is a {intens} {pos_strong} surprise", "has a {pos_strong} {aspect} and a {pos_mild} {aspect}",
    "won me over", "is worth every minute", "is {intens} {pos_mild} and {pos_strong}",
    "is {pos_mild}, {pos_mild} and {intens} {pos_strong}", "made me laugh and cry",
    "is {pos_noun} and {actor} is {pos_strong} as {role}",
]
NEGATIVE_PREDICATES = [
    "is {intens} {neg_strong}", "is {neg_strong}", "is {neg_noun}",
    "is one of the worst {genres} i have ever seen", "is a {neg_strong} {genre}",
    "is a {neg_mild} {genre} with a {neg_strong} {aspect}", "is {neg_strong} from start to finish",
    "is not worth it", "is not good at all", "is never interesting", "is not even close to good",
    "has a {neg_strong} {aspect} and a {neg_mild} {aspect}", "lost me within ten minutes",
    "is a waste of two hours", "is {intens} {neg_mild} and {neg_strong}",
    "is {neg_mild}, {neg_mild} and {intens} {neg_strong}", "made me want to walk out",
    "is {neg_noun} and {actor} is {neg_strong} as {role}",
]
MIXED_PREDICATES = [
    "is {pos_mild} but {neg_mild}", "has a {pos_strong} {aspect} but a {neg_strong} {aspect}",
    "is not great, not terrible", "is a mixed bag", "is fine but nothing special",
    "is {neg_mild} in places but {pos_mild} in others", "is okay", "is neither good nor bad",
    "has a {neg_mild} {aspect} but a {pos_mild} {aspect}", "is {intens} uneven",
]

# After an event opening, joined with ", and " (past tense).
POSITIVE_CLAUSES = [
    "it was {intens} {pos_strong}", "i {pos_verb} every minute of it", "it was {pos_noun}",
    "i was not disappointed", "it was worth every penny", "it was {pos_strong}",
    "it was better than i expected", "i have not stopped thinking about it",
    "it was never boring", "we {pos_verb} it", "it was a {pos_strong} {genre}",
    "everyone in the room {pos_verb} it",
]
NEGATIVE_CLAUSES = [
    "it was {intens} {neg_strong}", "i {neg_verb} every minute of it", "it was {neg_noun}",
    "i was {intens} bored", "it was not worth the money", "it was {neg_strong}",
    "it was worse than i expected", "i wanted to leave after twenty minutes",
    "it was never interesting", "we {neg_verb} it", "it was a {neg_strong} {genre}",
    "i fell asleep halfway through",
]
MIXED_CLAUSES = [
    "it was okay", "i have mixed feelings about it", "it was fine but nothing special",
    "it was {pos_mild} but {neg_mild}", "it was not great, not terrible",
    "parts of it were {pos_mild} and parts were {neg_mild}",
]

POSITIVE_SENTENCES = [
    "the {aspect} is {intens} {pos_strong}", "the {aspect} is {pos_strong}",
    "the {aspects} are {pos_strong}", "{actor} is {pos_strong} as {role}",
    "i {pos_verb} the {aspect}", "the {aspect} really works",
    "{actor} and {actor} are {pos_strong} together", "the {aspect} alone is worth the ticket",
    "the {aspect} is never dull", "the {aspect} is not bad either",
    "even the {aspect} is {pos_mild}", "{actor} gives a {pos_strong} performance",
    "i laughed a lot", "the {aspect} kept me smiling", "the {aspects} are a joy",
    "the {aspect} is {pos_mild} and the {aspect} is {pos_strong}",
    "{actor} has never been better", "the {aspects} are {intens} {pos_mild}",
    "the {aspect} is {pos_noun}",
]
NEGATIVE_SENTENCES = [
    "the {aspect} is {intens} {neg_strong}", "the {aspect} is {neg_strong}",
    "the {aspects} are {neg_strong}", "{actor} is {neg_strong} as {role}",
    "i {neg_verb} the {aspect}", "the {aspect} makes no sense", "the {aspect} is a mess",
    "{actor} looks bored as {role}", "the {aspect} is not good at all",
    "even the {aspect} is {neg_mild}", "{actor} gives a {neg_strong} performance",
    "the {aspects} are not funny at all", "the {aspect} is not worth the ticket",
    "the {aspect} is {neg_mild} and the {aspect} is {neg_strong}",
    "{actor} has never been worse", "the {aspects} are {intens} {neg_mild}",
    "the {aspect} is {neg_noun}", "nothing about the {aspect} works",
    "the {aspect} drags and the {aspects} are {neg_strong}",
]
CONTRAST_SENTENCES = [
    "the {aspect} is {pos_mild} but the {aspect} is {neg_mild}",
    "the {aspect} is {neg_mild} but the {aspect} is {pos_mild}",
    "although the {aspect} is {neg_mild}, the {aspect} is {pos_mild}",
    "although the {aspect} is {pos_mild}, the {aspect} is {neg_mild}",
    "the {aspect} is {neg_mild}, but {actor} is {pos_mild} as {role}",
    "{actor} is {pos_mild} as {role}, although the {aspect} is {neg_mild}",
    "the {aspects} are {pos_strong} but the {aspect} is {neg_strong}",
    "the {aspects} are {neg_strong} but the {aspect} is {pos_strong}",
]
NEUTRAL_SENTENCES = [
    "{actor} is cast as {role}", "it runs about {duration}", "it is set in {place}",
    "the story follows {premise}", "it was filmed in {place}",
    "the cast includes {actor} and {actor}", "it is the second film from {actor}",
    "the music is by {actor}", "it is a {genre} about {premise}",
    "{actor} is cast as {role} opposite {actor}", "i went in knowing very little",
    "i had read the book first", "it is based on real events",
]

POSITIVE_VERDICTS = [
    "highly recommended", "i would watch it again", "go see it", "ten out of ten",
    "a must see", "i can't wait to see it again", "you will not regret it", "nine out of ten",
    "do not miss it", "i will be recommending it to everyone", "a must see for fans of {genres}",
    "easily one of the best {genres} of the year", "this one is a keeper",
]
NEGATIVE_VERDICTS = [
    "avoid it", "what a letdown", "skip this one", "what a waste of time", "two out of ten",
    "i would not recommend it", "not worth the ticket", "i want my two hours back",
    "i regret watching it", "never again", "easily one of the worst {genres} of the year",
    "one out of ten", "stay away from this one",
]
MIXED_VERDICTS = [
    "worth a look on a slow night", "five out of ten", "i have mixed feelings",
    "it has its moments", "not great, not terrible", "six out of ten",
    "maybe wait for it to come to tv", "fans of {genres} might like it",
    "it is fine for a rainy afternoon", "some scenes work and some do not",
]

# Filler choices for each {slot} that is not built by code (title, genre, actor).
SLOTS: dict[str, list[str]] = {
    "t_adj": TITLE_ADJECTIVES,
    "t_noun": TITLE_NOUNS,
    "first_name": FIRST_NAMES,
    "role": ROLES,
    "premise": PREMISES,
    "place": PLACES,
    "when": WHENS,
    "company": COMPANY,
    "relative": RELATIVES,
    "duration": DURATIONS,
    "aspect": ASPECTS,
    "aspects": ASPECTS_PLURAL,
    "pos_mild": POS_ADJ_MILD,
    "pos_strong": POS_ADJ_STRONG,
    "neg_mild": NEG_ADJ_MILD,
    "neg_strong": NEG_ADJ_STRONG,
    "intens": INTENSIFIERS,
    "pos_noun": POS_NOUNS,
    "neg_noun": NEG_NOUNS,
    "pos_verb": POS_PAST_VERBS,
    "neg_verb": NEG_PAST_VERBS,
}


# "my friends and i" is a common real opening; "friends" sits in the prompt, never in the scored
# continuation of a longer prefix, so it is the one valenced word the openings keep.
VALENCED_OPENING_WORDS = {"friends"}


def neutral_words() -> set[str]:
    """Every word of the neutral slot fillers and openings (which should carry no sentiment)."""
    phrases = (
        TITLE_ADJECTIVES + TITLE_NOUNS + FIRST_NAMES + LAST_NAMES + ROLES + PREMISES + PLACES
        + WHENS + COMPANY + RELATIVES + DURATIONS + ASPECTS + ASPECTS_PLURAL
        + [g for pair in GENRES for g in pair] + SUBJECT_OPENINGS + EVENT_OPENINGS
    )
    words: set[str] = set()
    for phrase in phrases:
        for token in phrase.replace(",", " ").split():
            if not token.startswith("{"):
                words.add(token.split("'")[0])
    return words
