//! The expression classes, in the Ad-Corre release's order.

use serde::{Deserialize, Serialize};

/// A facial expression class. The discriminant is the label index used by the Ad-Corre
/// release and by AffectNet: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust,
/// 6 Anger, 7 Contempt (8-class setting only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Expression {
    /// Label 0.
    Neutral = 0,
    /// Label 1.
    Happy = 1,
    /// Label 2.
    Sad = 2,
    /// Label 3.
    Surprise = 3,
    /// Label 4.
    Fear = 4,
    /// Label 5.
    Disgust = 5,
    /// Label 6.
    Anger = 6,
    /// Label 7 (8-class models only).
    Contempt = 7,
}

impl Expression {
    /// All eight classes in label order.
    pub const ALL: [Expression; 8] = [
        Expression::Neutral,
        Expression::Happy,
        Expression::Sad,
        Expression::Surprise,
        Expression::Fear,
        Expression::Disgust,
        Expression::Anger,
        Expression::Contempt,
    ];

    /// The first `num_classes` classes (7 or 8), i.e. a model's class order.
    pub fn classes(num_classes: usize) -> &'static [Expression] {
        &Self::ALL[..num_classes.min(Self::ALL.len())]
    }

    /// The class with this label index, if any.
    pub fn from_label(label: usize) -> Option<Expression> {
        Self::ALL.get(label).copied()
    }

    /// The label index.
    pub fn label(self) -> usize {
        self as usize
    }

    /// The class name as the release prints it.
    pub fn name(self) -> &'static str {
        match self {
            Expression::Neutral => "Neutral",
            Expression::Happy => "Happy",
            Expression::Sad => "Sad",
            Expression::Surprise => "Surprise",
            Expression::Fear => "Fear",
            Expression::Disgust => "Disgust",
            Expression::Anger => "Anger",
            Expression::Contempt => "Contempt",
        }
    }
}

impl std::fmt::Display for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
