pub mod ha;
