//! A short list held inline: an exchange's message keys and the connections that answered it
//! are one or two each, and a heap allocation for each list was a tenth of an exchange's.

/// Up to `N` items inline, the rest on the heap, in the order pushed.
#[derive(Clone, Debug)]
pub struct Few<T: Copy + Default, const N: usize> {
    len: usize,
    inline: [T; N],
    more: Vec<T>,
}

impl<T: Copy + Default, const N: usize> Default for Few<T, N> {
    fn default() -> Self {
        Self {
            len: 0,
            inline: [T::default(); N],
            more: Vec::new(),
        }
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> Few<T, N> {
    pub fn push(&mut self, item: T) {
        if self.len < N {
            self.inline[self.len] = item;
        } else {
            self.more.push(item);
        }
        self.len += 1;
    }

    pub fn contains(&self, item: &T) -> bool {
        self.iter().any(|i| i == item)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.inline[..self.len.min(N)].iter().chain(&self.more)
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> IntoIterator for Few<T, N> {
    type Item = T;
    type IntoIter =
        std::iter::Chain<std::iter::Take<std::array::IntoIter<T, N>>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.inline
            .into_iter()
            .take(self.len.min(N))
            .chain(self.more)
    }
}

impl<'a, T: Copy + Default + PartialEq, const N: usize> IntoIterator for &'a Few<T, N> {
    type Item = &'a T;
    type IntoIter = std::iter::Chain<std::slice::Iter<'a, T>, std::slice::Iter<'a, T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.inline[..self.len.min(N)].iter().chain(&self.more)
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> Extend<T> for Few<T, N> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_keep_their_order_inline_and_past_it() {
        let mut few: Few<u64, 2> = Few::default();
        assert!(!few.contains(&1));
        few.extend([1, 2, 3]);
        few.push(4);
        assert!(few.contains(&1) && few.contains(&3) && !few.contains(&5));
        assert_eq!(few.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!((&few).into_iter().count(), 4);
        assert_eq!(few.clone().into_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
        let mut one: Few<u64, 2> = Few::default();
        one.push(9);
        assert_eq!(one.into_iter().collect::<Vec<_>>(), [9]);
    }
}
