//! moola's data contract: parquet windows, UCR/UEA `.ts` files, OHLC CSV slicing.
