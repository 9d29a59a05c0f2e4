//! The list of a user's conversations: most recently active first, paged by a token that names where the
//! previous page stopped. Pure: the store reads are the caller's (`grpc.rs`, `list_conversations`).
//!
//! The list is read whole from the user's reverse index (`conversations_by_user`) and sorted for each page,
//! so a page costs a few store reads per conversation of the user; fine for the hundreds of conversations
//! a person has, not for a bot in a million.

use std::cmp::Reverse;

use chat_model::ConversationId;

use crate::error::ChatError;

/// Conversations per page when the caller gives no limit, and the most a page may hold.
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// How many conversations are read from the store at once while building a list.
pub const READS_IN_FLIGHT: usize = 16;

/// A conversation's place in the list: newest activity first, then by id (so that equal times keep one
/// order across pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    activity: Reverse<i64>,
    id: ConversationId,
}

impl Place {
    pub fn new(last_activity_ms: i64, id: ConversationId) -> Place {
        Place { activity: Reverse(last_activity_ms), id }
    }

    /// The page token of a page that ended at this place.
    pub fn token(&self) -> String {
        format!("{}:{}", self.activity.0, self.id)
    }

    /// Reads a page token; an empty one is the first page.
    pub fn from_token(token: &str) -> Result<Option<Place>, ChatError> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || ChatError::Invalid("page_token is not one this service gave".into());
        let (at, id) = token.split_once(':').ok_or_else(bad)?;
        let at = at.parse::<i64>().map_err(|_| bad())?;
        let id = ConversationId::parse(id).map_err(|_| bad())?;
        Ok(Some(Place::new(at, id)))
    }
}

/// The page size a request asks for (0: the default).
pub fn limit(asked: u32) -> Result<usize, ChatError> {
    match asked {
        0 => Ok(DEFAULT_LIMIT as usize),
        n if n <= MAX_LIMIT => Ok(n as usize),
        n => Err(ChatError::Invalid(format!("limit {n} is over {MAX_LIMIT}"))),
    }
}

/// One page of `items` (each with its place): those after `after`, in list order, at most `limit`; and the
/// token of the next page, `None` when this one is the last.
pub fn page<T>(mut items: Vec<(Place, T)>, after: Option<Place>, limit: usize) -> (Vec<T>, Option<String>) {
    items.sort_unstable_by_key(|(place, _)| *place);
    let start = after.map_or(0, |after| items.partition_point(|(p, _)| *p <= after));
    let rest = items.len() - start;
    let taken: Vec<(Place, T)> = items.into_iter().skip(start).take(limit).collect();
    let next = (rest > limit).then(|| taken.last().map(|(p, _)| p.token())).flatten();
    (taken.into_iter().map(|(_, t)| t).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<ConversationId> {
        let mut v: Vec<ConversationId> = (0..n).map(|_| ConversationId::generate()).collect();
        v.sort();
        v
    }

    #[test]
    fn newest_first_then_by_id_and_pages_cover_each_once() {
        let c = ids(5);
        // Two share a time: they keep the order of their ids.
        let items = vec![
            (Place::new(10, c[0]), "a"),
            (Place::new(50, c[1]), "b"),
            (Place::new(30, c[2]), "c"),
            (Place::new(30, c[3]), "d"),
            (Place::new(40, c[4]), "e"),
        ];
        let (first, token) = page(items.clone(), None, 2);
        assert_eq!(first, ["b", "e"]);
        let after = Place::from_token(&token.clone().expect("more")).expect("token");
        let (second, token) = page(items.clone(), after, 2);
        assert_eq!(second, ["c", "d"]);
        let (third, token) = page(items.clone(), Place::from_token(&token.expect("more")).expect("token"), 2);
        assert_eq!((third, token), (vec!["a"], None));
        // Exactly a page's worth: no next page.
        assert_eq!(page(items.clone(), None, 5).1, None);
        assert_eq!(page(Vec::<(Place, ())>::new(), None, 5), (vec![], None));
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let p = Place::new(1_795_733_940_458, ConversationId::generate());
        assert_eq!(Place::from_token(&p.token()).expect("parses"), Some(p));
        assert_eq!(Place::from_token("").expect("empty"), None);
        for bad in ["x", "12", "12:not-a-uuid", ":", "a:0192f0a4-3c1e-7a55-9d3e-1f6a2b3c4d5e"] {
            assert!(matches!(Place::from_token(bad), Err(ChatError::Invalid(_))), "{bad}");
        }
        assert_eq!(limit(0).ok(), Some(20));
        assert_eq!(limit(100).ok(), Some(100));
        assert!(limit(101).is_err());
    }
}
